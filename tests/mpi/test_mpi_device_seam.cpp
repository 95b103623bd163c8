// Owns the DeviceSeam.* tests under mpirun: the Trainer on the guarded backend (tests/unit/guarded_backend.h: CPU ops, memory host code cannot touch) with guarded data communicators over MPI gives bitwise the CPU backend's steps (2 ranks, ep 2 and expert-DP 2, ZeRO 1 and 3, fp32 and bf16).
#include <gtest/gtest.h>

#include "mpi_gtest_main.h"

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include "../unit/guarded_backend.h"
#include "config/config.h"
#include "train/runtime.h"
#include "train/trainer.h"

using namespace moe;

static Runtime* g_rt = nullptr;

static std::string tiny_yaml(const std::string& data) {
  return "run: {dir: /tmp/moe_mpi_unused}\n"
         "model: {arch: qwen3_moe, vocab_size: 64, hidden_size: 32, intermediate_size: 48, moe_intermediate_size: 24,\n"
         "        num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 8, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "moe: {capacity_factor: 1.25, aux_loss_coef: 0.05, z_loss_coef: 0.01, router_jitter: 0.05,\n"
         "      expert_dropout: 0.1, bias_update_rate: 0.01}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 3, lr: 0.01, warmup_steps: 1,\n"
         "        weight_decay: 0.1, grad_clip: 1.0, seed: 7}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

static std::string write_tokens(int rank) {
  const std::string path = "/tmp/moe_mpi_seam_" + std::to_string(::getpid()) + "_" + std::to_string(rank) + ".bin";
  std::mt19937 rng(321);  // same content on every rank
  std::ofstream f(path, std::ios::binary);
  for (int i = 0; i < 4000; ++i) {
    const uint32_t v = rng() % 64;
    f.write(reinterpret_cast<const char*>(&v), 4);
  }
  return path;
}

// contract: the device seam under MPI. Gradient reductions, ZeRO-3 gathers and the EP row exchange go through the
// guarded data communicators (as NCCL on GPUs); the EP row counts, statistics and stop flags through the host world.
TEST(DeviceSeam, MpiGuardedBitwise) {
  Communicator& w = *g_rt->world;
  const std::string data = write_tokens(w.rank());
  const std::string yaml = tiny_yaml(data);
  TrainerDevice dev;
  dev.make_fp32 = [] { return test::make_guarded_backend<float>(); };
  dev.make_bf16 = [] { return test::make_guarded_backend<bf16>(); };
  dev.make_data_world = [](Communicator& host) -> std::unique_ptr<Communicator> {
    return std::make_unique<test::GuardedComm>(host.split(0, host.rank()));
  };
  for (const char* prec : {"fp32", "bf16"})
    for (const std::string& layout : {std::string("parallel.ep=") + std::to_string(w.size()), std::string("parallel.ep=1")})
      for (int zero : {1, 3}) {
        const std::vector<std::string> sets = {std::string("train.precision=") + prec, layout,
                                               "parallel.zero=" + std::to_string(zero)};
        const std::string what = std::string(prec) + " " + layout + " zero " + std::to_string(zero);
        Trainer cpu(parse_config(yaml, sets, "mpi-seam"), w);
        Trainer gd(parse_config(yaml, sets, "mpi-seam"), w, dev);
        for (int s = 0; s < 3; ++s) {
          const StepResult a = cpu.step(s);
          const StepResult b = gd.step(s);
          EXPECT_EQ(a.loss, b.loss) << what << " step " << s + 1;
          EXPECT_EQ(a.grad_norm, b.grad_norm) << what << " step " << s + 1;
          EXPECT_EQ(a.aux_loss, b.aux_loss) << what << " step " << s + 1;
          EXPECT_EQ(a.expert_load, b.expert_load) << what << " step " << s + 1;
        }
        const std::vector<float> pa = cpu.gather_full_params(), pb = gd.gather_full_params();
        ASSERT_EQ(pa.size(), pb.size());
        EXPECT_EQ(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)), 0) << what << ": weights differ";
      }
  EXPECT_GT(test::MemoryGuard::get().opens(), 0);
  std::remove(data.c_str());
}

MOE_MPI_GTEST_MAIN(g_rt)
