// Owns the layout-invariance tests under mpirun: every ep × expert-dp layout trains like one process (DESIGN C4.capacity, C5.order).
#include <gtest/gtest.h>

#include "mpi_gtest_main.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "config/config.h"
#include "core/rng.h"
#include "train/runtime.h"
#include "peft/lora.h"
#include "train/trainer.h"

using namespace moe;

static Runtime* g_rt = nullptr;

// A tiny MoE with every stochastic and capacity option on; the token file is written per rank.
static std::string tiny_yaml(const std::string& data) {
  return "run: {dir: /tmp/moe_mpi_unused}\n"
         "model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2,\n"
         "        num_heads: 4, num_kv_heads: 2, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "moe: {capacity_factor: 1.0, drop_policy: probs, aux_loss_coef: 0.05, z_loss_coef: 0.01,\n"
         "      router_jitter: 0.05, expert_dropout: 0.1}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 4, lr: 0.01, warmup_steps: 1,\n"
         "        weight_decay: 0.1, grad_clip: 1.0, seed: 7}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

static std::string write_tokens(int rank) {
  const std::string path = "/tmp/moe_mpi_tokens_" + std::to_string(::getpid()) + "_" + std::to_string(rank) + ".bin";
  std::mt19937 rng(123);  // same content on every rank
  std::ofstream f(path, std::ios::binary);
  for (int i = 0; i < 4000; ++i) {
    const uint32_t v = rng() % 64;
    f.write(reinterpret_cast<const char*>(&v), 4);
  }
  return path;
}

struct Run {
  std::vector<double> loss, aux, z, gnorm;
  std::vector<float> params;
};

// Trains `steps` updates; grad_accum_total micro-batches per step are spread over comm's ranks.
static Run train(Communicator& comm, const std::string& yaml, int ep, int grad_accum_total,
                 std::vector<std::string> sets) {
  const int world = comm.size();
  sets.push_back("parallel.ep=" + std::to_string(ep));
  sets.push_back("train.grad_accum=" + std::to_string(grad_accum_total / world));
  Config cfg = parse_config(yaml, sets, "mpi-test");
  Trainer tr(cfg, comm);
  Run r;
  for (int s = 0; s < cfg.train.steps; ++s) {
    StepResult st = tr.step(s);
    r.loss.push_back(st.loss);
    r.aux.push_back(st.aux_loss);
    r.z.push_back(st.z_loss);
    r.gnorm.push_back(st.grad_norm);
  }
  r.params = tr.gather_full_params();
  return r;
}

static void expect_rel(const std::vector<double>& a, const std::vector<double>& b, double tol, const char* what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_LE(std::fabs(a[i] - b[i]), tol * std::max(1.0, std::fabs(b[i]))) << what << " at step " << i + 1;
}

static void compare_layout(int ep, const std::vector<std::string>& sets) {
  Communicator& world = *g_rt->world;
  const std::string data = write_tokens(world.rank());
  const std::string yaml = tiny_yaml(data);
  const int ga_total = 2 * world.size();
  auto self = make_self_communicator();
  const Run ref = train(*self, yaml, 1, ga_total, sets);  // one process, same global batch and micro-batches
  const Run got = train(world, yaml, ep, ga_total, sets);
  std::remove(data.c_str());
  expect_rel(got.loss, ref.loss, 1e-5, "loss");
  expect_rel(got.aux, ref.aux, 1e-5, "aux_loss");
  expect_rel(got.z, ref.z, 1e-5, "z_loss");
  expect_rel(got.gnorm, ref.gnorm, 1e-5, "grad_norm");
  ASSERT_EQ(got.params.size(), ref.params.size());
  // Final weights: relative L2 difference ≤ 1e-5, and no single weight off by more than 1e-4 · max|w|
  // (isolated coordinates with near-zero gradients carry Adam-amplified rounding).
  double maxdiff = 0, maxref = 0, d2 = 0, r2 = 0;
  for (size_t i = 0; i < ref.params.size(); ++i) {
    const double d = double(got.params[i]) - double(ref.params[i]);
    maxdiff = std::max(maxdiff, std::fabs(d));
    maxref = std::max(maxref, double(std::fabs(ref.params[i])));
    d2 += d * d;
    r2 += double(ref.params[i]) * double(ref.params[i]);
  }
  EXPECT_LE(std::sqrt(d2 / r2), 1e-5) << "final weights: relative L2 difference " << std::sqrt(d2 / r2);
  EXPECT_LE(maxdiff, 1e-4 * maxref) << "final weights differ: max |diff| " << maxdiff << ", max |w| " << maxref;
  if (g_rt->world->rank() == 0)
    std::printf("  [layout ep=%d world=%d] rel L2 %.2e, max |diff| %.2e\n", ep, g_rt->world->size(),
                std::sqrt(d2 / r2), maxdiff);
  // The run must really differ from a trivially equal one: losses move.
  EXPECT_NE(ref.loss.front(), ref.loss.back());
}

TEST(Layouts, C5_order_DataParallel) { compare_layout(1, {}); }

TEST(Layouts, C4_capacity_ExpertParallel2) {
  if (g_rt->world->size() % 2) GTEST_SKIP() << "needs an even number of ranks";
  compare_layout(2, {});
}

TEST(Layouts, C4_capacity_ExpertParallelAll) {
  const int W = g_rt->world->size();
  if (4 % W) GTEST_SKIP() << "needs world dividing 4 experts";
  compare_layout(W, {});
}

TEST(Layouts, C4_aux_GlobalScopeExpertParallel) {
  if (g_rt->world->size() % 2) GTEST_SKIP() << "needs an even number of ranks";
  compare_layout(2, {"moe.aux_loss_scope=global"});
}

TEST(Layouts, C4_capacity_PositionPolicyDataParallel) { compare_layout(1, {"moe.drop_policy=position"}); }

TEST(Layouts, Zero1DataParallel) { compare_layout(1, {"parallel.zero=1"}); }
TEST(Layouts, Zero2DataParallel) { compare_layout(1, {"parallel.zero=2"}); }
TEST(Layouts, Zero3DataParallel) { compare_layout(1, {"parallel.zero=3"}); }
TEST(Layouts, Zero3ExpertParallel2) {
  if (g_rt->world->size() % 2) GTEST_SKIP() << "needs an even number of ranks";
  compare_layout(2, {"parallel.zero=3"});
}
TEST(Layouts, Zero2ExpertParallel2TiedQwen3) {
  if (g_rt->world->size() % 2) GTEST_SKIP() << "needs an even number of ranks";
  compare_layout(2, {"parallel.zero=2", "model.arch=qwen3_moe", "model.tie_word_embeddings=true",
                     "model.moe_intermediate_size=24", "model.head_dim=16"});
}
TEST(Layouts, Zero3ExpertParallel2TiedQwen3) {
  if (g_rt->world->size() % 2) GTEST_SKIP() << "needs an even number of ranks";
  compare_layout(2, {"parallel.zero=3", "model.arch=qwen3_moe", "model.tie_word_embeddings=true",
                     "model.moe_intermediate_size=24", "model.head_dim=16"});
}

// ZeRO-3: measured per-rank parameter + gradient + optimizer bytes ≤ 1.1 × whole-model state / world.
// LoRA/QLoRA (issue 11): adapters on attention and every expert, router trained, under EP2 x ZeRO-3 == one
// process. The final state is compared on the trainable entries alone (adapters start with B = 0 and are small
// next to the frozen embeddings, which would hide them in a whole-table norm).
static void compare_lora_layout(const std::vector<std::string>& extra) {
  if (g_rt->world->size() % 2) GTEST_SKIP() << "needs an even number of ranks";
  std::vector<std::string> sets = {"parallel.zero=3", "moe.expert_dropout=0", "peft.r=2", "peft.alpha=4",
                                   "peft.targets=[q_proj,v_proj,o_proj,w1,w2,w3]", "peft.train_router=true"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  Communicator& world = *g_rt->world;
  const std::string data = write_tokens(world.rank());
  const std::string yaml = tiny_yaml(data);
  const int ga_total = 2 * world.size();
  auto self = make_self_communicator();
  const Run ref = train(*self, yaml, 1, ga_total, sets);
  const Run got = train(world, yaml, 2, ga_total, sets);
  std::remove(data.c_str());
  expect_rel(got.loss, ref.loss, 1e-5, "loss");
  expect_rel(got.aux, ref.aux, 1e-5, "aux_loss");
  expect_rel(got.gnorm, ref.gnorm, 1e-5, "grad_norm");
  std::vector<std::string> all = sets;
  all.push_back("train.grad_accum=1");
  const Config cfg = parse_config(yaml, all, "mpi-test");
  const ParamTable table = build_param_table(cfg.model, resolve_lora_spec(cfg.peft, cfg.model));
  ASSERT_EQ(got.params.size(), size_t(table.total_numel()));
  ASSERT_EQ(ref.params.size(), got.params.size());
  int adapters = 0;
  double worst = 0;
  std::string worst_name;
  for (const ParamInfo& p : table.entries()) {
    if (!p.trainable) continue;
    adapters += is_lora_name(p.name);
    double d2 = 0, r2 = 0, moved = 0;
    for (i64 i = p.offset; i < p.offset + p.numel; ++i) {
      const double d = double(got.params[size_t(i)]) - double(ref.params[size_t(i)]);
      d2 += d * d;
      r2 += double(ref.params[size_t(i)]) * double(ref.params[size_t(i)]);
      moved = std::max(moved, std::fabs(double(ref.params[size_t(i)])));
    }
    ASSERT_GT(moved, 0) << p.name << " is zero after training: the case does not train it";
    // 1e-4: lora_A gets no gradient at step 1 (B = 0) and tiny ones after, which Adam's normalisation turns
    // into updates of full size: the fp32 reduction-order rounding of those gradients shows in A at ~3e-5.
    EXPECT_LE(std::sqrt(d2 / r2), 1e-4) << p.name << ": relative L2 difference " << std::sqrt(d2 / r2);
    if (std::sqrt(d2 / r2) > worst) worst = std::sqrt(d2 / r2), worst_name = p.name;
  }
  if (g_rt->world->rank() == 0)
    std::printf("  [lora layout ep=2 zero=3 world=%d] worst trainable entry rel L2 %.2e (%s)\n", g_rt->world->size(),
                worst, worst_name.c_str());
  EXPECT_GT(adapters, 0);
  EXPECT_NE(ref.loss.front(), ref.loss.back());
}

TEST(Layouts, LoraZero3ExpertParallel2) { compare_lora_layout({"peft.method=lora"}); }
TEST(Layouts, QloraZero3ExpertParallel2) { compare_lora_layout({"peft.method=qlora", "peft.double_quant=true"}); }
// LoRA dropout: the masks are keyed by token / routed pair, layer, micro-batch and step, never by rank, and the expert
// rows' pair keys travel with them over the all-to-all: every layout draws the same masks.
TEST(Layouts, LoraDropoutZero3ExpertParallel2) { compare_lora_layout({"peft.method=lora", "peft.dropout=0.2"}); }

TEST(Zero3, MemoryShareMeasured) {
  Communicator& world = *g_rt->world;
  const std::string data = write_tokens(world.rank());
  for (int ep : {1, 2}) {
    if (world.size() % ep) continue;
    Config cfg = parse_config(tiny_yaml(data), {"parallel.zero=3", "parallel.ep=" + std::to_string(ep),
                                                "model.num_layers=16", "train.steps=1"}, "mpi-test");
    Trainer tr(cfg, world);
    tr.step(0);
    const StateBytes b = tr.state().bytes();
    const double whole = 16.0 * double(build_param_table(tr.model_config()).tensor_numel());
    const double share = double(b.state()) / (whole / world.size());
    if (world.rank() == 0)
      std::printf("  [zero-3 ep=%d world=%d] state %lld B per rank = %.3f x whole/world; working buffers %lld B\n", ep,
                  world.size(), (long long)b.state(), share, (long long)b.working);
    EXPECT_LE(share, 1.1);
    EXPECT_GE(share, 0.9);  // every element is held somewhere exactly once
  }
  std::remove(data.c_str());
}

// Start-up staging one unit at a time (Trainer::init_params → ParamState::set_unit_params): the gathered
// weights equal a whole-table Philox(seed, Init) draw over the logical model bitwise, at every ZeRO stage and ep.
TEST(StartupStaging, SeededInitBitwiseWholeTable) {
  Communicator& world = *g_rt->world;
  const std::string data = write_tokens(world.rank());
  for (int zero : {0, 3}) {
    for (int ep : {1, 2}) {
      if (world.size() % ep) continue;
      Config cfg = parse_config(tiny_yaml(data), {"parallel.zero=" + std::to_string(zero),
                                                  "parallel.ep=" + std::to_string(ep)}, "mpi-test");
      Trainer tr(cfg, world);
      const std::vector<float> got = tr.gather_full_params();
      const ParamTable t = build_param_table(cfg.model);
      std::vector<float> want(size_t(t.total_numel()), 0.f);
      const Philox ph(cfg.train.seed, RngPurpose::Init);
      for (const ParamInfo& p : t.entries())
        for (i64 i = 0; i < p.numel; ++i)
          want[size_t(p.offset + i)] =
              p.is_norm ? 1.f : float(cfg.model.init_std * ph.normal(uint64_t(i), name_stream(p.name), 0));
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), 4 * want.size()), 0) << "zero " << zero << " ep " << ep;
    }
  }
  std::remove(data.c_str());
}

MOE_MPI_GTEST_MAIN(g_rt)
