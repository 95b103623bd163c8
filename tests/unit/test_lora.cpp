// Owns the LoRA/QLoRA unit tests: target resolution, the state/base tables, PEFT's init, and what training may touch.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "config/config.h"
#include "model/param_table.h"
#include "peft/lora.h"
#include "peft/nf4.h"
#include "test_util.h"
#include "train/trainer.h"

using namespace moe;
namespace fs = std::filesystem;
using moe::test::TmpDir;

namespace {

ModelConfig mixtral() {
  ModelConfig m;
  m.arch = Arch::Mixtral;
  m.vocab_size = 64;
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.num_experts = 4;
  m.top_k = 2;
  return m;
}

PeftConfig lora_cfg(std::vector<std::string> targets) {
  PeftConfig p;
  p.method = PeftMethod::Lora;
  p.r = 4;
  p.alpha = 8;
  p.targets = std::move(targets);
  return p;
}

std::string config_text(const fs::path& dir, const std::string& arch_extra = "") {
  const std::string data = moe::test::random_token_file(dir);
  return "run: {dir: " + (dir / "run").string() + "}\n"
         "model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2,\n"
         "        num_heads: 4, num_kv_heads: 2, num_experts: 4, top_k: 2, init_std: 0.2" + arch_extra + "}\n"
         "moe: {capacity_factor: 1.25, aux_loss_coef: 0.05, z_loss_coef: 0.01, router_jitter: 0.05}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 4, lr: 0.02, warmup_steps: 1, weight_decay: 0.1}\n"
         "peft: {method: lora, r: 4, alpha: 8, targets: [q_proj, k_proj, v_proj, o_proj, w1, w2, w3]}\n"
         "log: {every: 100}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

}  // namespace

TEST(LoraSpec, TargetsInBothSpellingsAndScaling) {
  const ModelConfig m = mixtral();
  const LoraSpec a = resolve_lora_spec(lora_cfg({"q_proj", "self_attn.v_proj", "w1", "experts.w3", "w2"}), m);
  EXPECT_TRUE(a.targets(LoraProj::Q) && a.targets(LoraProj::V) && !a.targets(LoraProj::K) && !a.targets(LoraProj::O));
  EXPECT_TRUE(a.targets(LoraProj::Gate) && a.targets(LoraProj::Up) && a.targets(LoraProj::Down));
  const LoraSpec b = resolve_lora_spec(lora_cfg({"gate_proj", "up_proj", "down_proj"}), m);
  EXPECT_EQ(b.mask, resolve_lora_spec(lora_cfg({"gate_up_proj", "w2"}), m).mask);
  EXPECT_EQ(b.gate_up_blocks(), 2);
  EXPECT_EQ(resolve_lora_spec(lora_cfg({"all-linear"}), m).mask, 0x7f);
  EXPECT_DOUBLE_EQ(a.scaling(), 2.0);  // alpha / r
  PeftConfig rs = lora_cfg({"q_proj"});
  rs.use_rslora = true;
  EXPECT_DOUBLE_EQ(resolve_lora_spec(rs, m).scaling(), 4.0);  // alpha / sqrt(r)
}

TEST(LoraSpec, RouterUnknownAndEmptyTargetsAreRefused) {
  const ModelConfig m = mixtral();
  for (const char* router : {"gate", "block_sparse_moe.gate", "mlp.gate", "router"})
    moe::test::expect_bad_input([&] { resolve_lora_spec(lora_cfg({"q_proj", router}), m); },
                                {"peft.targets", router, "router", "peft.train_router"});
  moe::test::expect_bad_input([&] { resolve_lora_spec(lora_cfg({"q_proj", "wq"}), m); },
                              {"peft.targets", "'wq'", "matches no projection"});
  moe::test::expect_bad_input([&] { resolve_lora_spec(lora_cfg({}), m); }, {"peft.targets", "empty"});
  ModelConfig q = m;
  q.arch = Arch::Qwen3Moe;
  q.mlp_only_layers = {1};
  moe::test::expect_bad_input([&] { resolve_lora_spec(lora_cfg({"down_proj"}), q); }, {"dense-MLP"});
  EXPECT_NO_THROW(resolve_lora_spec(lora_cfg({"q_proj"}), q));
}

// The state table holds adapters (trainable), router (per train_router), norms and embeddings (frozen) and no base
// linear; the base table holds exactly the base linears, in the full table's per-unit order.
TEST(LoraTables, StateAndBaseSplitTheModel) {
  const ModelConfig m = mixtral();
  LoraSpec s = resolve_lora_spec(lora_cfg({"q_proj", "o_proj", "w1", "w3", "w2"}), m);
  const ParamTable full = build_param_table(m), state = build_param_table(m, s), base = build_base_table(m);
  EXPECT_EQ(state.units().size(), full.units().size());
  EXPECT_EQ(base.units().size(), full.units().size());
  i64 base_n = 0;
  for (const ParamInfo& p : full.entries()) {
    const bool linear = p.name.find("_proj.") != std::string::npos || p.name.find(".w1.") != std::string::npos ||
                        p.name.find(".w2.") != std::string::npos || p.name.find(".w3.") != std::string::npos;
    EXPECT_EQ(base.find(p.name) != nullptr, linear) << p.name;
    EXPECT_EQ(state.find(p.name) != nullptr, !linear) << p.name;
    if (linear) {
      base_n += p.numel;
      EXPECT_EQ(base.at(p.name).unit, p.unit) << p.name;
    } else {
      EXPECT_FALSE(state.at(p.name).trainable) << p.name << " must be frozen (router: train_router false)";
    }
  }
  EXPECT_EQ(base.tensor_numel(), base_n);
  const ParamInfo& qa = state.at("model.layers.1.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(qa.shape, (std::vector<i64>{4, 32}));
  EXPECT_TRUE(qa.trainable);
  EXPECT_EQ(state.at("model.layers.1.self_attn.o_proj.lora_B.weight").shape, (std::vector<i64>{32, 4}));
  EXPECT_EQ(state.find("model.layers.0.self_attn.k_proj.lora_A.weight"), nullptr);
  const ParamInfo& gb = state.at("model.layers.0.block_sparse_moe.experts.3.gate_up_proj.lora_B.weight");
  EXPECT_EQ(gb.shape, (std::vector<i64>{96, 4}));  // [2I, r]: gate rows, then up rows
  EXPECT_TRUE(gb.expert);
  EXPECT_EQ(state.at("model.layers.0.block_sparse_moe.experts.3.down_proj.lora_A.weight").shape,
            (std::vector<i64>{4, 48}));
  // Trainable = adapters only: 2 layers x (q: 4·32 + 32·4, o: 4·32 + 32·4) + 2·4 experts x (gate_up: 4·32 + 96·4,
  // down: 4·48 + 32·4).
  EXPECT_EQ(state.trainable_numel(), 2 * (256 + 256) + 8 * (128 + 384 + 192 + 128));
  s.train_router = true;
  EXPECT_TRUE(build_param_table(m, s).at("model.layers.0.block_sparse_moe.gate.weight").trainable);
  // Expert parallelism: a rank's state table holds its experts' adapters only.
  const ParamTable shard = build_param_table(m, s, ExpertRange{2, 2});
  EXPECT_EQ(shard.find("model.layers.0.block_sparse_moe.experts.1.gate_up_proj.lora_A.weight"), nullptr);
  EXPECT_NE(shard.find("model.layers.0.block_sparse_moe.experts.2.gate_up_proj.lora_A.weight"), nullptr);
}

TEST(LoraInit, KaimingUniformAZeroBSeeded) {
  std::vector<float> a(4 * 48), a2(a.size()), other(a.size()), b(32 * 4, 1.f);
  lora_init(a.data(), "x.down_proj.lora_A.weight", {4, 48}, 7);
  lora_init(a2.data(), "x.down_proj.lora_A.weight", {4, 48}, 7);
  lora_init(other.data(), "y.down_proj.lora_A.weight", {4, 48}, 7);
  lora_init(b.data(), "x.down_proj.lora_B.weight", {32, 4}, 7);
  const double bound = 1.0 / std::sqrt(48.0);
  double mx = 0, var = 0;
  for (float v : a) {
    mx = std::max(mx, double(std::fabs(v)));
    var += double(v) * v;
  }
  EXPECT_LE(mx, bound);
  EXPECT_GT(mx, 0.8 * bound);  // the draws fill the interval
  EXPECT_NEAR(var / double(a.size()), bound * bound / 3.0, 0.35 * bound * bound / 3.0);  // U(−b, b): b²/3
  EXPECT_EQ(a, a2);
  EXPECT_NE(a, other);
  for (float v : b) EXPECT_EQ(v, 0.f);
}

// Training touches adapters (and the router when trained) only: router, norms and embeddings bitwise unchanged,
// base weights never written, AdamW moments for trainable entries only; the adapters do move.
TEST(LoraTrainer, OnlyAdaptersAndRouterChange) {
  TmpDir d;
  auto self = make_self_communicator();
  const std::string yaml = config_text(d.path());
  for (const bool train_router : {false, true}) {
    SCOPED_TRACE(train_router ? "router trained" : "router frozen");
    Trainer tr(parse_config(yaml, {std::string("peft.train_router=") + (train_router ? "true" : "false")}, "t"), *self);
    const ParamTable& t = tr.table();
    const std::vector<float> before = tr.params();
    std::vector<std::vector<float>> base_before;
    for (size_t u = 0; u < tr.base_table().units().size(); ++u) base_before.push_back(tr.base_unit_to_host(int(u)));
    for (int s = 0; s < 3; ++s) {
      const StepResult r = tr.step(s);
      ASSERT_TRUE(std::isfinite(r.loss) && r.grad_norm > 0);
    }
    const std::vector<float> after = tr.params();
    bool adapters_moved = false;
    for (const ParamInfo& p : t.entries()) {
      bool same = true;
      for (i64 i = 0; i < p.numel; ++i) same = same && before[size_t(p.offset + i)] == after[size_t(p.offset + i)];
      if (is_lora_name(p.name)) adapters_moved = adapters_moved || !same;
      else if (p.name.find(".gate.weight") != std::string::npos) EXPECT_EQ(same, !train_router) << p.name;
      else EXPECT_TRUE(same) << p.name << " is frozen but changed";
    }
    EXPECT_TRUE(adapters_moved);
    for (size_t u = 0; u < base_before.size(); ++u)
      EXPECT_EQ(tr.base_unit_to_host(int(u)), base_before[u]) << "base unit " << u << " was written";
    EXPECT_EQ(tr.state().bytes().optimizer, 8 * t.trainable_numel());
  }
}

// QLoRA: the base is NF4 (block 64, double quant): every base tensor reads back as bitsandbytes-style dequantized
// values of the full-precision init, the stored bytes are ≤ 0.53 per base parameter, and training runs.
TEST(QloraTrainer, BaseIsNf4AndTrains) {
  TmpDir d;
  auto self = make_self_communicator();
  const std::string yaml = config_text(d.path());
  Trainer q(parse_config(yaml, {"peft.method=qlora", "peft.double_quant=true"}, "t"), *self);
  Trainer l(parse_config(yaml, {}, "t"), *self);  // LoRA: the same base in fp32
  const ParamTable& bt = q.base_table();
  for (size_t u = 0; u < bt.units().size(); ++u) {
    const std::vector<float> got = q.base_unit_to_host(int(u)), full = l.base_unit_to_host(int(u));
    for (const ParamInfo& p : bt.entries()) {
      if (p.unit != int(u)) continue;
      const i64 off = p.offset - bt.units()[u].begin;
      const Nf4Tensor t = nf4_quantize(full.data() + off, p.numel, Nf4DoubleQuant::on);
      std::vector<float> want(size_t(p.numel));
      nf4_dequantize(t, want.data());
      for (i64 i = 0; i < p.numel; ++i) ASSERT_EQ(got[size_t(off + i)], want[size_t(i)]) << p.name << "[" << i << "]";
    }
  }
  EXPECT_LE(double(q.base_weight_bytes()), 0.53 * double(bt.tensor_numel()));
  for (int s = 0; s < 2; ++s) ASSERT_TRUE(std::isfinite(q.step(s).loss));
}
