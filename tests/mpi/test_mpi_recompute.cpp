// Owns the Recompute.* tests under mpirun: with expert parallelism, recomputation in backward (which repeats the MoE all-to-alls) trains bit for bit like none [C6.recompute].
#include <gtest/gtest.h>

#include "mpi_gtest_main.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include "config/config.h"
#include "train/runtime.h"
#include "train/trainer.h"

using namespace moe;

static Runtime* g_rt = nullptr;

// A tiny MoE with capacity drops, jitter and expert dropout on (the MoE forward rerun must redraw them alike).
static std::string tiny_yaml(const std::string& data) {
  return "run: {dir: /tmp/moe_mpi_unused}\n"
         "model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2,\n"
         "        num_heads: 4, num_kv_heads: 2, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "moe: {capacity_factor: 1.0, drop_policy: probs, aux_loss_coef: 0.05, z_loss_coef: 0.01,\n"
         "      router_jitter: 0.05, expert_dropout: 0.1}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 3, lr: 0.01, warmup_steps: 1,\n"
         "        weight_decay: 0.1, grad_clip: 1.0, seed: 7}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

static std::string write_tokens(int rank) {
  const std::string path =
      "/tmp/moe_mpi_recompute_" + std::to_string(::getpid()) + "_" + std::to_string(rank) + ".bin";
  std::mt19937 rng(321);  // same content on every rank
  std::ofstream f(path, std::ios::binary);
  for (int i = 0; i < 4000; ++i) {
    const uint32_t v = rng() % 64;
    f.write(reinterpret_cast<const char*>(&v), 4);
  }
  return path;
}

struct Trained {
  std::vector<float> first_grads;  // this rank's gradients of step 1
  std::vector<double> loss, gnorm;
  std::vector<float> params;       // full model after the run
};

static Trained train(const std::string& yaml, int ep, const std::string& recompute) {
  Config cfg = parse_config(yaml, {"parallel.ep=" + std::to_string(ep), "train.recompute=" + recompute}, "mpi-test");
  Trainer tr(cfg, *g_rt->world);
  Trained r;
  tr.compute_grads(0);
  r.first_grads = tr.grads();
  for (int s = 0; s < cfg.train.steps; ++s) {
    const StepResult st = tr.step(s);
    r.loss.push_back(st.loss);
    r.gnorm.push_back(st.grad_norm);
  }
  r.params = tr.gather_full_params();
  return r;
}

static bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// contract: C6.recompute
TEST(Recompute, C6_recompute_ExpertParallel2Bitwise) {
  const int world = g_rt->world->size();
  ASSERT_EQ(world % 2, 0);
  const std::string data = write_tokens(g_rt->world->rank());
  const std::string yaml = tiny_yaml(data);
  const Trained none = train(yaml, 2, "none");
  for (const char* mode : {"selective", "full"}) {
    SCOPED_TRACE(mode);
    const Trained got = train(yaml, 2, mode);
    EXPECT_TRUE(same_bits(got.first_grads, none.first_grads)) << "step-1 gradients of this rank differ";
    EXPECT_EQ(got.loss, none.loss);
    EXPECT_EQ(got.gnorm, none.gnorm);
    EXPECT_TRUE(same_bits(got.params, none.params)) << "final weights differ";
  }
  std::remove(data.c_str());
  EXPECT_NE(none.loss.front(), none.loss.back());
}

MOE_MPI_GTEST_MAIN(g_rt)
