// Owns the Bf16.* tests under mpirun: train.precision: bf16 with ZeRO-3 and expert parallelism 2 trains within bf16 rounding of fp32 (DESIGN §8).
#include <gtest/gtest.h>

#include "mpi_gtest_main.h"

#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include "config/config.h"
#include "train/runtime.h"
#include "train/trainer.h"

using namespace moe;

static Runtime* g_rt = nullptr;

static std::string tiny_yaml(const std::string& data) {
  return "run: {dir: /tmp/moe_mpi_unused}\n"
         "model: {arch: qwen3_moe, vocab_size: 64, hidden_size: 32, intermediate_size: 48, moe_intermediate_size: 24,\n"
         "        num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 8, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "moe: {capacity_factor: 1.25, drop_policy: probs, aux_loss_coef: 0.05, z_loss_coef: 0.01}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 3, lr: 0.01, warmup_steps: 1,\n"
         "        weight_decay: 0.1, grad_clip: 1.0, seed: 7}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

static std::string write_tokens(int rank) {
  const std::string path = "/tmp/moe_mpi_bf16_" + std::to_string(::getpid()) + "_" + std::to_string(rank) + ".bin";
  std::mt19937 rng(321);  // same content on every rank
  std::ofstream f(path, std::ios::binary);
  for (int i = 0; i < 4000; ++i) {
    const uint32_t v = rng() % 64;
    f.write(reinterpret_cast<const char*>(&v), 4);
  }
  return path;
}

static double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// ZeRO-3, ep = world size (2 ranks: ep 2): three bf16 steps are finite and within bf16 rounding of the fp32 run
// (loss 1e-2, aux/z/grad_norm 5e-2 relative); the gathered masters are fp32 values.
TEST(Bf16, Zero3ExpertParallelCloseToFp32) {
  Communicator& w = *g_rt->world;
  const std::string data = write_tokens(w.rank());
  const std::string yaml = tiny_yaml(data);
  const std::vector<std::string> base = {"parallel.zero=3", "parallel.ep=" + std::to_string(w.size())};
  std::vector<std::string> b16 = base, f32 = base;
  b16.push_back("train.precision=bf16");
  f32.push_back("train.precision=fp32");
  Trainer b(parse_config(yaml, b16, "mpi-bf16"), w), f(parse_config(yaml, f32, "mpi-bf16"), w);
  for (int s = 0; s < 3; ++s) {
    const StepResult rb = b.step(s), rf = f.step(s);
    ASSERT_TRUE(std::isfinite(rb.loss) && std::isfinite(rb.grad_norm)) << "step " << s + 1;
    EXPECT_LE(rel(rb.loss, rf.loss), 1e-2) << "loss step " << s + 1 << ": " << rb.loss << " vs " << rf.loss;
    EXPECT_LE(rel(rb.aux_loss, rf.aux_loss), 5e-2) << "aux step " << s + 1;
    EXPECT_LE(rel(rb.z_loss, rf.z_loss), 5e-2) << "z step " << s + 1;
    EXPECT_LE(rel(rb.grad_norm, rf.grad_norm), 5e-2) << "grad_norm step " << s + 1;
    EXPECT_NE(rb.loss, rf.loss) << "step " << s + 1 << ": bf16 gave exactly the fp32 loss";
  }
  const std::vector<float> master = b.gather_full_params();
  i64 not_bf16 = 0;
  for (float x : master) not_bf16 += round_bf16(x) != x;
  EXPECT_GT(not_bf16, i64(master.size()) / 2) << "the masters must be fp32 values";
  ::unlink(data.c_str());
}

MOE_MPI_GTEST_MAIN(g_rt)
