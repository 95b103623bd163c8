// Owns the multi-rank checkpoint tests: bitwise resume on the same layout and resharded resume across world size, ep and ZeRO stage (DESIGN §7).
#include <gtest/gtest.h>

#include "mpi_gtest_main.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "config/config.h"
#include "train/runtime.h"
#include "train/trainer.h"

using namespace moe;
namespace fs = std::filesystem;

static Runtime* g_rt = nullptr;

// A directory every rank agrees on (rank 0's pid), created by rank 0.
static fs::path shared_dir(const std::string& tag) {
  std::vector<double> pid(1, double(::getpid()));
  g_rt->world->broadcast(pid.data(), 1, CommDtype::F64, 0);
  const fs::path p = fs::temp_directory_path() / ("moe_mpi_ckpt_" + std::to_string(long(pid[0])) + "_" + tag);
  if (g_rt->world->rank() == 0) {
    fs::remove_all(p);
    fs::create_directories(p);
    std::mt19937 rng(9);
    std::ofstream f(p / "tokens.bin", std::ios::binary);
    for (int i = 0; i < 6000; ++i) {
      const uint32_t v = rng() % 64;
      f.write(reinterpret_cast<const char*>(&v), 4);
    }
  }
  g_rt->world->barrier();
  return p;
}

static std::string yaml(const fs::path& dir) {
  return "run: {dir: " + (dir / "run").string() + "}\n"
         "model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2,\n"
         "        num_heads: 4, num_kv_heads: 2, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "moe: {capacity_factor: 1.25, aux_loss_coef: 0.05, z_loss_coef: 0.01, router_jitter: 0.05, expert_dropout: 0.1}\n"
         "train: {seq_len: 8, micro_batch: 2, steps: 6, lr: 0.01, warmup_steps: 2, weight_decay: 0.1}\n"
         "log: {every: 100}\n"
         "data: {format: tokens, path: " + (dir / "tokens.bin").string() + "}\n";
}

// Sets for a layout: micro-batches per step stay 4 in total (global batch fixed).
static std::vector<std::string> layout(int world, int ep, int zero, int steps) {
  return {"parallel.ep=" + std::to_string(ep), "parallel.zero=" + std::to_string(zero),
          "train.grad_accum=" + std::to_string(4 / world), "train.steps=" + std::to_string(steps)};
}

struct Result {
  std::vector<double> loss;
  std::vector<float> params;
};

static Result run(Communicator& comm, const fs::path& dir, const std::vector<std::string>& sets, const std::string& resume) {
  Trainer tr(parse_config(yaml(dir), sets, "mpi-ckpt"), comm);
  if (!resume.empty()) tr.resume(resume);
  Result r;
  for (int s = tr.start_step(); s < tr.config().train.steps; ++s) r.loss.push_back(tr.step(s).loss);
  r.params = tr.gather_full_params();
  return r;
}

static void write_after(Communicator& comm, const fs::path& dir, const std::vector<std::string>& sets) {
  Trainer tr(parse_config(yaml(dir), sets, "mpi-ckpt"), comm);
  tr.run();  // checkpoint at its last step
}

static double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(d / n);
}

TEST(CheckpointMpi, BitwiseResumeSameLayout) {
  Communicator& w = *g_rt->world;
  const int W = w.size();
  for (int ep : {1, 2}) {
    if (W % ep) continue;
    const fs::path dir = shared_dir("bitwise" + std::to_string(ep));
    const Result straight = run(w, dir, layout(W, ep, 1, 6), "");
    write_after(w, dir, layout(W, ep, 1, 3));
    const Result resumed = run(w, dir, layout(W, ep, 1, 6), "auto");
    ASSERT_EQ(resumed.loss.size(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(resumed.loss[i], straight.loss[3 + i]) << "ep " << ep << " step " << 4 + i;
    EXPECT_EQ(resumed.params, straight.params) << "ep " << ep << ": final weights not bitwise equal";
    if (w.rank() == 0) fs::remove_all(dir);
  }
}

// Writer layout → reader layout; the continued run equals the uninterrupted run of the reader's layout.
static void resharded(const std::string& tag, int w_world, int w_ep, int w_zero, int r_world, int r_ep, int r_zero) {
  Communicator& world = *g_rt->world;
  auto self = make_self_communicator();
  Communicator& writer = w_world == 1 ? *self : world;
  Communicator& reader = r_world == 1 ? *self : world;
  // Writers/readers on the self communicator run on every rank; give each its own directory then.
  const fs::path dir = shared_dir(tag);
  const fs::path wdir = w_world == 1 ? dir / ("r" + std::to_string(world.rank())) : dir;
  if (w_world == 1) {
    fs::create_directories(wdir);
    fs::copy_file(dir / "tokens.bin", wdir / "tokens.bin", fs::copy_options::overwrite_existing);
  }
  world.barrier();
  const Result straight = run(reader, wdir, layout(r_world, r_ep, r_zero, 6), "");
  write_after(writer, wdir, layout(w_world, w_ep, w_zero, 3));
  world.barrier();
  const Result resumed = run(reader, wdir, layout(r_world, r_ep, r_zero, 6), "auto");
  ASSERT_EQ(resumed.loss.size(), 3u);
  for (int i = 0; i < 3; ++i)
    EXPECT_LE(std::fabs(resumed.loss[i] - straight.loss[3 + i]), 1e-5 * std::fabs(straight.loss[3 + i])) << tag;
  const double d = rel_l2(resumed.params, straight.params);
  EXPECT_LE(d, 1e-5) << tag << ": final weights rel L2 " << d;
  if (world.rank() == 0) std::printf("  [%s] resumed vs uninterrupted: rel L2 %.2e\n", tag.c_str(), d);
  world.barrier();
  if (world.rank() == 0) fs::remove_all(dir);
}

TEST(CheckpointMpi, ReshardWorldToOne) { resharded("w_to_1", g_rt->world->size(), 1, 0, 1, 1, 0); }
TEST(CheckpointMpi, ReshardOneToWorldEp) {
  const int W = g_rt->world->size();
  resharded("1_to_w", 1, 1, 0, W, W, 2);
}
TEST(CheckpointMpi, ReshardEp2ToEp1) {
  if (g_rt->world->size() % 2) GTEST_SKIP();
  resharded("ep2_to_ep1", g_rt->world->size(), 2, 0, g_rt->world->size(), 1, 0);
}
TEST(CheckpointMpi, ReshardZero3ToZero0) {
  const int W = g_rt->world->size();
  resharded("z3_to_z0", W, W % 2 ? 1 : 2, 3, W, 1, 0);
}

MOE_MPI_GTEST_MAIN(g_rt)
