// Owns the single-process Trainer tests of train.precision: bf16 (DESIGN §8): steps close to fp32 under ZeRO 0 and 3,
// fp32 masters, the compute copy, fp32 router/norm values read by Model<bf16>, and bitwise resume.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "config/config.h"
#include "model/model.h"
#include "test_util.h"
#include "train/trainer.h"

using namespace moe;
namespace fs = std::filesystem;
using moe::test::TmpDir;

namespace {

std::string config_text(const fs::path& dir) {
  const std::string data = moe::test::random_token_file(dir);
  return "run: {dir: " + (dir / "run").string() + "}\n"
         "model: {arch: qwen3_moe, vocab_size: 64, hidden_size: 32, intermediate_size: 48, moe_intermediate_size: 24,\n"
         "        num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 8, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "moe: {capacity_factor: 1.25, aux_loss_coef: 0.05, z_loss_coef: 0.01, router_jitter: 0.05,\n"
         "      expert_dropout: 0.1, bias_update_rate: 0.01}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 6, lr: 0.01, warmup_steps: 2, weight_decay: 0.1,\n"
         "        precision: bf16}\n"
         "checkpoint: {keep: 2}\n"
         "log: {every: 100}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

}  // namespace

// A bf16 step under ZeRO 0 and 3 (one process): finite, within bf16 rounding of the fp32 run (loss 1e-2, aux/z/
// grad_norm 5e-2 relative over 3 steps); the masters stay fp32 (most values not bf16-representable); ZeRO 0's
// compute copy is round_bf16 of the master, element for element. (Stage 3's per-unit copy and params_acc are
// checked in ParamState.Bf16CopyIsRoundedMaster.)
TEST(TrainerBf16, StepsCloseToFp32MastersFp32) {
  TmpDir d;
  auto self = make_self_communicator();
  const std::string yaml = config_text(d.path());
  for (int zero : {0, 3}) {
    SCOPED_TRACE("zero " + std::to_string(zero));
    const std::string z = "parallel.zero=" + std::to_string(zero);
    Trainer b(parse_config(yaml, {z}, "t"), *self), f(parse_config(yaml, {z, "train.precision=fp32"}, "t"), *self);
    ASSERT_EQ(b.state().precision(), Precision::Bf16);
    ASSERT_EQ(f.state().precision(), Precision::Fp32);
    for (int s = 0; s < 3; ++s) {
      const StepResult rb = b.step(s), rf = f.step(s);
      ASSERT_TRUE(std::isfinite(rb.loss) && std::isfinite(rb.grad_norm)) << "step " << s + 1;
      EXPECT_LE(rel(rb.loss, rf.loss), 1e-2) << "loss step " << s + 1 << ": " << rb.loss << " vs " << rf.loss;
      EXPECT_LE(rel(rb.aux_loss, rf.aux_loss), 5e-2) << "aux step " << s + 1;
      EXPECT_LE(rel(rb.z_loss, rf.z_loss), 5e-2) << "z step " << s + 1;
      EXPECT_LE(rel(rb.grad_norm, rf.grad_norm), 5e-2) << "grad_norm step " << s + 1;
      EXPECT_NE(rb.loss, rf.loss) << "the bf16 run computed exactly the fp32 loss: is it bf16 at all?";
    }
    const std::vector<float> master = b.gather_full_params();
    i64 not_bf16 = 0;
    for (float x : master) not_bf16 += round_bf16(x) != x;
    EXPECT_GT(not_bf16, i64(master.size()) / 2) << "the masters must be fp32 values";
    if (zero == 0) {
      const std::vector<bf16>& copy = b.state().compute_copy();
      const std::vector<float>& p = b.params();
      ASSERT_EQ(copy.size(), p.size());
      for (const ParamInfo& e : b.table().entries())
        for (i64 i = 0; i < e.numel; ++i)
          ASSERT_EQ(float(copy[size_t(e.offset + i)]), round_bf16(p[size_t(e.offset + i)])) << e.name << "[" << i << "]";
    }
  }
}

// Model<bf16> reads the router weight and every norm gain from the fp32 values (params_acc), the matrices from the
// bf16 copy: garbage in the copy's router/norm entries changes nothing (bitwise); a norm gain or router value off
// its bf16 rounding in the fp32 values changes the result.
TEST(TrainerBf16, ModelReadsRouterAndNormGainsInFp32) {
  ModelConfig m;
  m.arch = Arch::Qwen3Moe;
  m.vocab_size = 64, m.hidden_size = 32, m.intermediate_size = 48, m.moe_intermediate_size = 24;
  m.num_layers = 2, m.num_heads = 4, m.num_kv_heads = 2, m.head_dim = 8, m.num_experts = 4, m.top_k = 2;
  MoeConfig moe;
  const i64 B = 2, L = 8;
  Model<bf16> model(m, moe, B, L);
  const ParamTable& t = model.table();
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0.f, 0.2f);
  std::vector<float> master(size_t(t.total_numel()), 0.f);
  for (const ParamInfo& e : t.entries())
    for (i64 i = 0; i < e.numel; ++i) master[size_t(e.offset + i)] = e.is_norm ? 1.f + 0.3f * nd(g) : nd(g);
  std::vector<bf16> copy(master.begin(), master.end());
  std::vector<int32_t> in(size_t(B * L)), tg(in.size());
  for (size_t i = 0; i < in.size(); ++i) in[i] = int32_t(g() % 64), tg[i] = int32_t(g() % 64);
  auto run = [&](const std::vector<bf16>& c, const std::vector<float>& a) {
    const MicroStats& st = model.forward(c.data(), in.data(), tg.data(), {}, RngCtx{}, Mode::Train, a.data());
    std::vector<float> out(model.logits(), model.logits() + B * L * m.vocab_size);
    out.push_back(float(st.ce_sum));
    out.push_back(float(st.router[0].lse_sq_sum));
    return out;
  };
  const std::vector<float> base = run(copy, master);
  // Garbage in the bf16 copy of 1-D gains and router weights: not read.
  std::vector<bf16> bad = copy;
  int touched = 0;
  for (const ParamInfo& e : t.entries())
    if (e.is_norm || e.name.find("mlp.gate.weight") != std::string::npos) {
      std::fill(bad.begin() + e.offset, bad.begin() + e.offset + e.numel, bf16(-7.f));
      ++touched;
    }
  EXPECT_GE(touched, 2 * 5 + 1);  // per layer: 2 norms, q/k norms, router; + the final norm
  const std::vector<float> same = run(bad, master);
  EXPECT_EQ(std::memcmp(base.data(), same.data(), base.size() * 4), 0) << "the bf16 copy's gains/router were read";
  // The fp32 values of the norm gains (then of the router weight) rounded to bf16: the result moves, so each is
  // read unrounded.
  for (const char* what : {"norm gains", "router weight"}) {
    std::vector<float> rounded = master;
    for (const ParamInfo& e : t.entries())
      if (what[0] == 'n' ? e.is_norm : e.name.find("mlp.gate.weight") != std::string::npos)
        for (i64 i = 0; i < e.numel; ++i) rounded[size_t(e.offset + i)] = round_bf16(rounded[size_t(e.offset + i)]);
    const std::vector<float> moved = run(copy, rounded);
    EXPECT_NE(std::memcmp(base.data(), moved.data(), base.size() * 4), 0) << "fp32 " << what << " not used";
  }
}

// A bf16 run of 6 steps == 3 steps, checkpoint, resume, 3 steps: metrics and fp32 masters bitwise (the checkpoint
// holds the fp32 masters and moments; the resumed run rebuilds its bf16 copy from them).
TEST(TrainerBf16, BitwiseResume) {
  TmpDir d;
  auto self = make_self_communicator();
  const std::string yaml = config_text(d.path());
  Trainer straight(parse_config(yaml, {}, "t"), *self);
  std::vector<StepResult> all;
  for (int s = 0; s < 6; ++s) all.push_back(straight.step(s));
  Trainer first(parse_config(yaml, {"train.steps=3"}, "t"), *self);
  first.run();
  ASSERT_TRUE(fs::exists(d.path() / "run/checkpoints/step_3.h5"));
  Trainer second(parse_config(yaml, {}, "t"), *self);
  second.resume("auto");
  ASSERT_EQ(second.start_step(), 3);
  ASSERT_EQ(second.state().precision(), Precision::Bf16);
  for (int s = 3; s < 6; ++s) {
    const StepResult r = second.step(s), &w = all[size_t(s)];
    EXPECT_EQ(r.loss, w.loss) << "step " << s + 1;
    EXPECT_EQ(r.aux_loss, w.aux_loss) << "step " << s + 1;
    EXPECT_EQ(r.z_loss, w.z_loss) << "step " << s + 1;
    EXPECT_EQ(r.grad_norm, w.grad_norm) << "step " << s + 1;
    EXPECT_EQ(r.expert_load, w.expert_load) << "step " << s + 1;
  }
  EXPECT_EQ(second.params(), straight.params());  // fp32 masters, bitwise
  EXPECT_EQ(std::memcmp(second.state().compute_copy().data(), straight.state().compute_copy().data(),
                        straight.state().compute_copy().size() * 2),
            0);
}
