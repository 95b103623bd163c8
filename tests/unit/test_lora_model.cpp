// Owns the LoraModel.* tests: the split-LoRA model equals the full model with merged weights W + s·B·A (double).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "model/model.h"
#include "peft/lora.h"

namespace moe {
namespace {

using Vec = std::vector<double>;

struct Case {
  const char* name;
  Arch arch;
  std::vector<std::string> targets;
  bool train_router;
  bool rslora;
  Recompute recompute;
};

ModelConfig tiny(Arch arch) {
  ModelConfig m;
  m.arch = arch;
  m.vocab_size = 29;
  m.hidden_size = 16;
  m.intermediate_size = 12;  // Mixtral expert width
  m.moe_intermediate_size = 10;  // Qwen3 expert width
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = arch == Arch::Qwen3Moe ? 6 : 0;
  m.num_experts = 4;
  m.top_k = 2;
  m.norm_topk_prob = true;
  return m;
}

// The merged ("materialised") weight and the chain rule: with W_eff = W + s·B·A and G = dL/dW_eff,
// dL/dB = s·G·Aᵀ and dL/dA = s·Bᵀ·G.
void merge_into(double* W, const double* A, const double* B, i64 out, i64 in, i64 r, double s) {
  for (i64 o = 0; o < out; ++o)
    for (i64 i = 0; i < in; ++i) {
      double acc = 0;
      for (i64 k = 0; k < r; ++k) acc += B[o * r + k] * A[k * in + i];
      W[o * in + i] += s * acc;
    }
}

double max_rel(const double* got, const Vec& want) {
  double d = 0, m = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    d = std::max(d, std::abs(got[i] - want[i]));
    m = std::max(m, std::abs(want[i]));
  }
  return m > 0 ? d / m : d;
}

void run_case(const Case& c) {
  SCOPED_TRACE(c.name);
  const ModelConfig m = tiny(c.arch);
  MoeConfig moe;
  moe.capacity_factor = 0;  // dropless: the routing decisions are those of the merged model
  moe.aux_loss_coef = 0.1;
  moe.z_loss_coef = 0.01;
  PeftConfig pc;
  pc.method = PeftMethod::Lora;
  pc.r = 3;
  pc.alpha = 5;
  pc.use_rslora = c.rslora;
  pc.targets = c.targets;
  pc.train_router = c.train_router;
  const LoraSpec spec = resolve_lora_spec(pc, m);
  const double s = spec.scaling();
  const i64 B = 2, L = 6, Tn = B * L;
  ModelOptions lo;
  lo.lora = spec;
  lo.recompute = c.recompute;
  Model<double> lm(m, moe, B, L, lo), fm(m, moe, B, L, ModelOptions{});
  const ParamTable &st = lm.table(), &bt = lm.base_table(), &ft = fm.table();

  std::mt19937_64 g(42);
  std::normal_distribution<double> nd(0.0, 0.3);
  Vec full(size_t(ft.total_numel()), 0.0), state(size_t(st.total_numel()), 0.0), base(size_t(bt.total_numel()), 0.0);
  for (const ParamInfo& p : ft.entries())
    for (i64 i = 0; i < p.numel; ++i) full[size_t(p.offset + i)] = p.is_norm ? 1.0 + 0.5 * nd(g) : nd(g);
  for (const ParamInfo& p : st.entries()) {
    if (is_lora_name(p.name)) {
      for (i64 i = 0; i < p.numel; ++i) state[size_t(p.offset + i)] = nd(g);  // B non-zero too
    } else {
      const ParamInfo& f = ft.at(p.name);
      std::copy(full.begin() + f.offset, full.begin() + f.offset + f.numel, state.begin() + p.offset);
    }
  }
  for (const ParamInfo& p : bt.entries()) {
    const ParamInfo& f = ft.at(p.name);
    std::copy(full.begin() + f.offset, full.begin() + f.offset + f.numel, base.begin() + p.offset);
  }
  // Merged weights: attention adapters fold into their projection, gate_up into the [w1; w3] rows, down into w2.
  Vec merged = full;
  const LayerNames n0 = layer_names(m, 0);
  for (int l = 0; l < m.num_layers; ++l) {
    const LayerNames n = layer_names(m, l);
    const std::string* attn[4] = {&n.q, &n.k, &n.v, &n.o};
    for (const std::string* w : attn) {
      const ParamInfo* a = st.find(lora_name(*w, LoraPart::A));
      if (!a) continue;
      const ParamInfo& b = st.at(lora_name(*w, LoraPart::B));
      const ParamInfo& f = ft.at(*w);
      merge_into(&merged[size_t(f.offset)], &state[size_t(a->offset)], &state[size_t(b.offset)], f.shape[0],
                 f.shape[1], a->shape[0], s);
    }
    for (int e = 0; e < m.num_experts; ++e) {
      const i64 I = m.expert_width(), H = m.hidden_size;
      if (const ParamInfo* a = st.find(lora_name(expert_gate_up_name(m, l, e), LoraPart::A))) {
        const ParamInfo& b = st.at(lora_name(expert_gate_up_name(m, l, e), LoraPart::B));
        const double* Bp = &state[size_t(b.offset)];
        if (spec.targets(LoraProj::Gate)) {
          merge_into(&merged[size_t(ft.at(n.w1[e]).offset)], &state[size_t(a->offset)], Bp, I, H, a->shape[0], s);
          Bp += I * a->shape[0];
        }
        if (spec.targets(LoraProj::Up))
          merge_into(&merged[size_t(ft.at(n.w3[e]).offset)], &state[size_t(a->offset)], Bp, I, H, a->shape[0], s);
      }
      if (const ParamInfo* a = st.find(lora_name(expert_down_name(m, l, e), LoraPart::A))) {
        const ParamInfo& b = st.at(lora_name(expert_down_name(m, l, e), LoraPart::B));
        merge_into(&merged[size_t(ft.at(n.w2[e]).offset)], &state[size_t(a->offset)], &state[size_t(b.offset)], H, I,
                   a->shape[0], s);
      }
    }
  }
  (void)n0;

  std::vector<int32_t> in(static_cast<size_t>(Tn)), tg(static_cast<size_t>(Tn));
  for (i64 t = 0; t < Tn; ++t) in[size_t(t)] = int32_t((t * 7 + 3) % m.vocab_size), tg[size_t(t)] = int32_t((t * 5 + 1) % m.vocab_size);
  const std::vector<std::vector<float>> bias;
  const RngCtx rng{};
  Vec gstate(state.size(), 0.0), gfull(full.size(), 0.0);
  FlatParamAccess<double> flat(st, state.data(), gstate.data());
  PeftParamAccess<double> peft(flat, [&](int u) { return base.data() + bt.units()[size_t(u)].begin; });
  const MicroStats ls = lm.forward(peft, in.data(), tg.data(), bias, rng, Mode::Train);
  const double lce = ls.ce_sum;
  const MicroStats fs = fm.forward(merged.data(), in.data(), tg.data(), bias, rng, Mode::Train);
  const Vec llog(lm.logits(), lm.logits() + Tn * m.vocab_size);
  EXPECT_LE(max_rel(fm.logits(), llog), 1e-11) << "logits";
  EXPECT_NEAR(lce, fs.ce_sum, 1e-10 * std::abs(fs.ce_sum));
  LossScales sc{1.0 / double(Tn), 0.1, 0.01};
  lm.backward(peft, in.data(), tg.data(), sc, AuxForm::Layer, nullptr);
  fm.backward(merged.data(), gfull.data(), in.data(), tg.data(), sc, AuxForm::Layer, nullptr);

  // Every trainable state entry: the router equals the merged model's router gradient; adapters the chain rule.
  int adapters = 0;
  for (const ParamInfo& p : st.entries()) {
    if (!p.trainable) continue;
    const double* got = &gstate[size_t(p.offset)];
    if (!is_lora_name(p.name)) {
      const ParamInfo& f = ft.at(p.name);
      EXPECT_LE(max_rel(got, Vec(gfull.begin() + f.offset, gfull.begin() + f.offset + f.numel)), 1e-10) << p.name;
      continue;
    }
    if (p.name.find(".lora_B.") != std::string::npos) continue;  // checked with its A below
    ++adapters;
    const std::string base_name = p.name.substr(0, p.name.find(".lora_A.")) + ".weight";
    const ParamInfo& pb = st.at(lora_name(base_name, LoraPart::B));
    const double* A = &state[size_t(p.offset)];
    const double* Bm = &state[size_t(pb.offset)];
    const i64 r = p.shape[0], in_f = p.shape[1], out_f = pb.shape[0];
    // G of the merged weight(s) this adapter feeds: [out_f, in_f] (gate_up: the w1 rows then the w3 rows).
    Vec G(size_t(out_f * in_f));
    const bool gate_up = base_name.find("gate_up_proj") != std::string::npos;
    const bool down = base_name.find("experts.") != std::string::npos && !gate_up;
    if (gate_up || down) {
      const int l = std::stoi(base_name.substr(std::string("model.layers.").size()));
      const std::string ex = base_name.substr(base_name.find("experts.") + 8);
      const int e = std::stoi(ex);
      const LayerNames n = layer_names(m, l);
      std::vector<const ParamInfo*> parts;
      if (gate_up) {
        if (spec.targets(LoraProj::Gate)) parts.push_back(&ft.at(n.w1[e]));
        if (spec.targets(LoraProj::Up)) parts.push_back(&ft.at(n.w3[e]));
      } else {
        parts.push_back(&ft.at(n.w2[e]));
      }
      size_t at = 0;
      for (const ParamInfo* q : parts)
        for (i64 i = 0; i < q->numel; ++i) G[at++] = gfull[size_t(q->offset + i)];
    } else {
      const ParamInfo& f = ft.at(base_name);
      for (i64 i = 0; i < f.numel; ++i) G[size_t(i)] = gfull[size_t(f.offset + i)];
    }
    Vec dA(size_t(r * in_f), 0.0), dB(size_t(out_f * r), 0.0);
    for (i64 o = 0; o < out_f; ++o)
      for (i64 i = 0; i < in_f; ++i)
        for (i64 k = 0; k < r; ++k) {
          dB[size_t(o * r + k)] += s * G[size_t(o * in_f + i)] * A[k * in_f + i];
          dA[size_t(k * in_f + i)] += s * Bm[o * r + k] * G[size_t(o * in_f + i)];
        }
    EXPECT_LE(max_rel(got, dA), 1e-10) << p.name;
    EXPECT_LE(max_rel(&gstate[size_t(pb.offset)], dB), 1e-10) << pb.name;
  }
  EXPECT_GT(adapters, 0);
}

TEST(LoraModel, EqualsMergedWeights) {
  const std::vector<Case> cases = {
      {"mixtral all-linear, router frozen", Arch::Mixtral, {"all-linear"}, false, false, Recompute::None},
      {"mixtral q,v + experts, router trained, rslora", Arch::Mixtral, {"q_proj", "v_proj", "w1", "w3", "w2"}, true,
       true, Recompute::None},
      {"qwen3 k,o + gate only + down, full recompute", Arch::Qwen3Moe, {"k_proj", "o_proj", "gate_proj", "down_proj"},
       true, false, Recompute::Full},
      {"qwen3 up only, selective recompute", Arch::Qwen3Moe, {"up_proj"}, false, false, Recompute::Selective},
  };
  for (const Case& c : cases) run_case(c);
}

}  // namespace
}  // namespace moe
