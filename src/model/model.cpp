// Owns the decoder forward/backward over the backend op table: embedding → layers (attention, MoE or dense MLP) → norm → lm_head → CE.
#include "model/model.h"

#include <algorithm>
#include <set>
#include <type_traits>

#include "core/error.h"

namespace moe {

namespace {
// Offsets of one layer's tensors in the flat parameter buffer (−1 when absent).
struct LayerOffsets {
  i64 in_norm, post_norm, q, k, v, o, q_norm = -1, k_norm = -1;
  i64 router = -1;
  std::vector<i64> w1, w3, w2;
  i64 dg = -1, du = -1, dd = -1;  // dense MLP
  int moe_index = -1;             // index of the MoE layer (0..num_moe−1), −1 for dense layers
  // LoRA/QLoRA: the base linears above (q..o, w1/w3/w2, dg/du/dd) are offsets in the BASE unit
  // (ParamAccess::base); adapters are offsets in the state unit: A, B per attention projection (−1 = none) and
  // per local expert (empty = none).
  i64 lora_a[4] = {-1, -1, -1, -1}, lora_b[4] = {-1, -1, -1, -1};  // q, k, v, o
  std::vector<i64> gu_a, gu_b, dn_a, dn_b;
};

// Which saved activations a recompute mode keeps per layer (the rest live once, shared by all layers). [C6.recompute]
enum class ActGroup {
  Input,      // x: the layer input (residual stream)
  AttnIn,     // norm1(x), rstd1
  AttnInner,  // q, k, v, their norms, RoPE outputs, attention output and lse
  MlpIn,      // h (after the attention residual), norm2(h), rstd2
  MlpInner,   // dense MLP activations (the MoE layer keeps its own)
};
bool kept(ActGroup g, Recompute r) {
  switch (g) {
    case ActGroup::Input: return true;
    case ActGroup::AttnIn:
    case ActGroup::MlpIn: return r != Recompute::Full;
    case ActGroup::AttnInner:
    case ActGroup::MlpInner: return r == Recompute::None;
  }
  return true;
}
}  // namespace

template <typename T>
struct Model<T>::Impl {
  // Saved activations of one layer.
  struct Acts {
    T* x;       // [T,H] layer input (residual stream)
    T* ln1;     // [T,H]
    A* rstd1;   // [T]
    T* q;       // [T,NH·D] projection (before q_norm)
    T* k;       // [T,NKV·D]
    T* v;       // [T,NKV·D]
    A* rstdq;   // [T·NH] (Qwen3)
    A* rstdk;   // [T·NKV] (Qwen3)
    T* qr;      // [T,NH·D] after q_norm and RoPE
    T* kr;      // [T,NKV·D]
    A* lse;     // [B,NH,L] attention log-sum-exp
    T* att;     // [T,NH·D]
    T* h;       // [T,H] after the attention residual
    T* ln2;     // [T,H]
    A* rstd2;   // [T]
    T* mlp_g;   // [T,ID] dense layers only
    T* mlp_u;   // [T,ID]
    T* mlp_a;   // [T,ID]
  };
  struct Dims {
    i64 B, L, Tn, H, D, NH, NKV, ID;
  };
  // Calls f(field of a, same field of b, group, elements) for every buffer a layer with these features has.
  template <class F>
  static void each_act(Acts& a, Acts& b, const Dims& d, bool qnorm, bool dense, F&& f) {
    const i64 Tn = d.Tn;
    f(a.x, b.x, ActGroup::Input, Tn * d.H);
    f(a.ln1, b.ln1, ActGroup::AttnIn, Tn * d.H);
    f(a.rstd1, b.rstd1, ActGroup::AttnIn, Tn);
    f(a.q, b.q, ActGroup::AttnInner, Tn * d.NH * d.D);
    f(a.k, b.k, ActGroup::AttnInner, Tn * d.NKV * d.D);
    f(a.v, b.v, ActGroup::AttnInner, Tn * d.NKV * d.D);
    if (qnorm) {
      f(a.rstdq, b.rstdq, ActGroup::AttnInner, Tn * d.NH);
      f(a.rstdk, b.rstdk, ActGroup::AttnInner, Tn * d.NKV);
    }
    f(a.qr, b.qr, ActGroup::AttnInner, Tn * d.NH * d.D);
    f(a.kr, b.kr, ActGroup::AttnInner, Tn * d.NKV * d.D);
    f(a.lse, b.lse, ActGroup::AttnInner, d.B * d.NH * d.L);
    f(a.att, b.att, ActGroup::AttnInner, Tn * d.NH * d.D);
    f(a.h, b.h, ActGroup::MlpIn, Tn * d.H);
    f(a.ln2, b.ln2, ActGroup::MlpIn, Tn * d.H);
    f(a.rstd2, b.rstd2, ActGroup::MlpIn, Tn);
    if (dense) {
      f(a.mlp_g, b.mlp_g, ActGroup::MlpInner, Tn * d.ID);
      f(a.mlp_u, b.mlp_u, ActGroup::MlpInner, Tn * d.ID);
      f(a.mlp_a, b.mlp_a, ActGroup::MlpInner, Tn * d.ID);
    }
  }

  std::vector<LayerOffsets> off;
  std::vector<Acts> acts;  // [layer]; fields not kept by the recompute mode point into `shared`
  Acts shared{};           // one layer's recomputed buffers (recompute ≠ None)
  i64 embed = 0, final_norm = 0, lm_head = 0;
  T* xf;       // [T,H] last residual
  T* lnf;      // [T,H]
  A* rstdf;    // [T]
  T* mlp_out;  // [T,H] scratch for the MLP/MoE output
  A* cos_t;    // [L, D/2]
  A* sin_t;
  // Backward scratch.
  T *dres, *dtmp, *dln, *dq, *dk, *dv, *datt, *dg, *du, *da;
  std::byte* ws = nullptr;  // op workspace (largest query of the ops this model calls)
  MoeScratch<T> ms{};
  std::vector<std::vector<double>> aux_dp;  // [moe layer][E]
  std::vector<ExpertWeights<T>> ew;         // [layer] local expert weights (MoE layers), repointed per call
  std::vector<ExpertGrads<T>> eg;           // [layer] their gradients
  // LoRA/QLoRA.
  bool peft = false;
  double lora_scale = 0;
  i64 lora_r = 0;
  T* lu = nullptr;  // [T, r] s·x·Aᵀ of one attention adapter (recomputed in backward)
  T* lv = nullptr;  // [T, r] backward scratch
  double lora_dropout = 0;          // p of the attention adapters' input dropout (0: off)
  T *ldx = nullptr, *ldd = nullptr;  // [T, max(H, NH·D)] with lora_dropout: masked input, its gradient
  bool embed_trainable = true, head_trainable = true;
  ExpertLoraShape elora{};
};

template <typename T>
Model<T>::Model(Backend<T>& backend, const ModelConfig& m, const MoeConfig& moe, i64 B, i64 L, const ModelOptions& opt)
    : Model(nullptr, &backend, m, moe, B, L, opt) {}

template <typename T>
Model<T>::Model(const ModelConfig& m, const MoeConfig& moe, i64 B, i64 L, const ModelOptions& opt)
    : Model(make_cpu_backend<T>(), nullptr, m, moe, B, L, opt) {}

template <typename T>
Model<T>::Model(std::unique_ptr<Backend<T>> owned, Backend<T>* backend, const ModelConfig& m, const MoeConfig& moe,
                i64 B, i64 L, const ModelOptions& opt)
    : owned_backend_(std::move(owned)), be_(backend ? *backend : *owned_backend_), ops_(*be_.dense), m_(m),
      moe_(moe), B_(B), L_(L), opt_(opt),
      table_(build_param_table(m, opt.lora, ExpertRange{opt.shard.first, opt.shard.count}, opt.dense_pad,
                               opt.expert_pad)),
      base_table_(opt.lora.active() ? build_base_table(m, ExpertRange{opt.shard.first, opt.shard.count}) : ParamTable{}),
      arena_(opt.policy), impl_(std::make_unique<Impl>()) {
  Impl& S = *impl_;
  const ExpertShardSpec& shard = opt.shard;
  const Recompute rc = opt.recompute;
  const i64 Tn = B * L, H = m.hidden_size, V = m.vocab_size, D = m.resolved_head_dim();
  const i64 NH = m.num_heads, NKV = m.num_kv_heads, E = m.num_experts, K = m.top_k, I = m.expert_width();
  const i64 ID = m.intermediate_size;
  MT_CHECK(D % 2 == 0, "head_dim must be even for RoPE, got ", D);
  const TopkNorm norm = (m.arch == Arch::Mixtral || m.norm_topk_prob) ? TopkNorm::Renormalize : TopkNorm::Raw;
  // Offsets are relative to the base of the tensor's unit (see ParamAccess).
  auto rel = [&](const std::string& name) {
    const ParamInfo& p = table_.at(name);
    return p.offset - table_.units()[p.unit].begin;
  };
  // Base linears: in the base table under LoRA/QLoRA, else in the table itself.
  const LoraSpec& lora = opt.lora;
  S.peft = lora.active();
  auto relb = [&](const std::string& name) {
    if (!S.peft) return rel(name);
    const ParamInfo& p = base_table_.at(name);
    return p.offset - base_table_.units()[p.unit].begin;
  };
  if (S.peft) {
    S.lora_scale = lora.scaling();
    S.lora_r = lora.r;
    S.lora_dropout = lora.any_attention() ? lora.dropout : 0.0;
    S.elora = ExpertLoraShape{lora.gate_up_blocks() ? lora.r_gate_up : 0, lora.gate_up_blocks(),
                              lora.targets(LoraProj::Gate), lora.targets(LoraProj::Up),
                              lora.targets(LoraProj::Down) ? lora.r : 0, lora.scaling(), lora.dropout};
    S.embed_trainable = table_.at("model.embed_tokens.weight").trainable;
    S.head_trainable = m.tie_word_embeddings ? S.embed_trainable : table_.at("lm_head.weight").trainable;
  }
  S.embed = rel("model.embed_tokens.weight");
  S.final_norm = rel("model.norm.weight");
  S.lm_head = m.tie_word_embeddings ? S.embed : rel("lm_head.weight");
  bool any_dense = false;
  for (int l = 0; l < m.num_layers; ++l) {
    LayerNames n = layer_names(m, l);
    LayerOffsets o;
    o.in_norm = rel(n.input_norm);
    o.post_norm = rel(n.post_norm);
    o.q = relb(n.q);
    o.k = relb(n.k);
    o.v = relb(n.v);
    o.o = relb(n.o);
    if (S.peft) {
      const std::string* names[4] = {&n.q, &n.k, &n.v, &n.o};
      const LoraProj projs[4] = {LoraProj::Q, LoraProj::K, LoraProj::V, LoraProj::O};
      for (int i = 0; i < 4; ++i) {
        if (!lora.targets(projs[i])) continue;
        o.lora_a[i] = rel(lora_name(*names[i], LoraPart::A));
        o.lora_b[i] = rel(lora_name(*names[i], LoraPart::B));
      }
    }
    if (!n.q_norm.empty()) {
      o.q_norm = rel(n.q_norm);
      o.k_norm = rel(n.k_norm);
    }
    if (!n.router.empty()) {
      o.router = rel(n.router);
      const int e0 = shard.count < 0 ? 0 : shard.first, e1 = shard.count < 0 ? int(E) : shard.first + shard.count;
      for (int e = e0; e < e1; ++e) {
        o.w1.push_back(relb(n.w1[e]));
        o.w3.push_back(relb(n.w3[e]));
        o.w2.push_back(relb(n.w2[e]));
        if (S.peft && S.elora.r_gate_up > 0) {
          o.gu_a.push_back(rel(lora_name(expert_gate_up_name(m, l, e), LoraPart::A)));
          o.gu_b.push_back(rel(lora_name(expert_gate_up_name(m, l, e), LoraPart::B)));
        }
        if (S.peft && S.elora.r_down > 0) {
          o.dn_a.push_back(rel(lora_name(expert_down_name(m, l, e), LoraPart::A)));
          o.dn_b.push_back(rel(lora_name(expert_down_name(m, l, e), LoraPart::B)));
        }
      }
      o.moe_index = num_moe_++;
      // Every MoE layer has the same shapes: with recompute one layer object (one set of buffers) serves all,
      // its forward rerun in backward before each layer's backward.
      if (rc == Recompute::None || moe_layers_.empty())
        moe_layers_.push_back(std::make_unique<MoeLayer<T>>(*be_.moe, Tn, H, E, K, I, moe, norm, shard, S.ms, arena_,
                                                            &ops_, S.peft ? &S.elora : nullptr));
    } else {
      o.dg = relb(n.dense_gate);
      o.du = relb(n.dense_up);
      o.dd = relb(n.dense_down);
      any_dense = true;
    }
    S.off.push_back(std::move(o));
  }
  const typename Impl::Dims dims{B, L, Tn, H, D, NH, NKV, ID};
  S.acts.assign(m.num_layers, typename Impl::Acts{});
  std::set<const void*> shared_reserved;
  for (int l = 0; l < m.num_layers; ++l) {
    Impl::each_act(S.acts[l], S.shared, dims, S.off[l].q_norm >= 0, S.off[l].moe_index < 0,
                   [&](auto& p, auto& sp, ActGroup g, i64 n) {
                     if (kept(g, rc)) arena_.reserve(&p, n);
                     else if (shared_reserved.insert(&sp).second) arena_.reserve(&sp, n);
                   });
  }
  arena_.reserve(&S.xf, Tn * H);
  arena_.reserve(&S.lnf, Tn * H);
  arena_.reserve(&S.rstdf, Tn);
  arena_.reserve(&S.mlp_out, Tn * H);
  arena_.reserve(&S.cos_t, L * D / 2);
  arena_.reserve(&S.sin_t, L * D / 2);
  arena_.reserve(&logits_, Tn * V);
  arena_.reserve(&S.dres, Tn * H);
  arena_.reserve(&S.dtmp, Tn * H);
  arena_.reserve(&S.dln, Tn * H);
  arena_.reserve(&S.dq, Tn * NH * D);
  arena_.reserve(&S.dk, Tn * NKV * D);
  arena_.reserve(&S.dv, Tn * NKV * D);
  arena_.reserve(&S.datt, Tn * NH * D);
  if (S.peft && S.lora_r > 0) {
    arena_.reserve(&S.lu, Tn * S.lora_r);
    arena_.reserve(&S.lv, Tn * S.lora_r);
    if (S.lora_dropout > 0) {
      arena_.reserve(&S.ldx, Tn * std::max(H, NH * D));
      arena_.reserve(&S.ldd, Tn * std::max(H, NH * D));
    }
  }
  if (any_dense) {
    arena_.reserve(&S.dg, Tn * ID);
    arena_.reserve(&S.du, Tn * ID);
    arena_.reserve(&S.da, Tn * ID);
  }
  if (!moe_layers_.empty())
    MoeScratch<T>::reserve(S.ms, arena_, Tn, H, E, K, I, moe, shard, S.peft && S.elora.dropout > 0);
  // One workspace for every op of a step (ops run one at a time): the largest query.
  i64 ws = ops_.attention_workspace_bytes(B, L, NH, NKV, D, m.sliding_window);
  std::vector<std::pair<i64, i64>> gemms = {{H, NH * D}, {H, NKV * D}, {NH * D, H}, {H, V}};
  if (any_dense) {
    gemms.push_back({H, ID});
    gemms.push_back({ID, H});
  }
  if (S.peft && S.lora_r > 0) {  // attention adapters: x·Aᵀ [T, r] and u·Bᵀ [T, out]
    const i64 r = S.lora_r;
    for (const i64 d : {H, NH * D, NKV * D}) {
      gemms.push_back({d, r});
      gemms.push_back({r, d});
    }
  }
  for (const auto& g : gemms)
    ws = std::max({ws, ops_.linear_forward_workspace_bytes(Tn, g.first, g.second),
                   ops_.linear_backward_workspace_bytes(Tn, g.first, g.second)});
  ws = std::max({ws, ops_.rmsnorm_backward_workspace_bytes(Tn, H), ops_.rmsnorm_backward_workspace_bytes(Tn * NH, D),
                 ops_.rmsnorm_backward_workspace_bytes(Tn * NKV, D)});
  if (ws > 0) arena_.reserve(&S.ws, ws);
  if (be_.space == MemSpace::Host || arena_.plan_only()) {
    arena_.allocate();
  } else {  // device backend: one block of its memory, planned once (STYLE habit 4)
    arena_block_ = Buffer<std::byte>(*be_.mem, arena_.bytes(), "the activation arena");
    arena_.allocate_in(arena_block_.data());
  }
  for (int l = 0; l < m.num_layers; ++l)
    Impl::each_act(S.acts[l], S.shared, dims, S.off[l].q_norm >= 0, S.off[l].moe_index < 0,
                   [&](auto& p, auto& sp, ActGroup g, i64) {
                     if (!kept(g, rc)) p = sp;
                   });
  if (arena_.allocated()) ops_.rope_table(S.cos_t, S.sin_t, L, D, m.rope_theta);
  S.aux_dp.assign(num_moe_, std::vector<double>(E, 0.0));
  // Per-forward results and per-layer expert tables, sized once (the step loop only overwrites them).
  last_.router.assign(num_moe_, RouterStats{});
  for (RouterStats& r : last_.router) {
    r.routed.assign(E, 0);
    r.prob_sum.assign(E, 0.0);
  }
  S.ew.resize(m.num_layers);
  S.eg.resize(m.num_layers);
  for (int l = 0; l < m.num_layers; ++l) {
    const size_t n = S.off[l].w1.size();
    S.ew[l].w1.resize(n), S.ew[l].w3.resize(n), S.ew[l].w2.resize(n);
    S.eg[l].w1.resize(n), S.eg[l].w3.resize(n), S.eg[l].w2.resize(n);
    const size_t ng = S.off[l].gu_a.size(), nd = S.off[l].dn_a.size();
    S.ew[l].gu_a.resize(ng), S.ew[l].gu_b.resize(ng), S.ew[l].dn_a.resize(nd), S.ew[l].dn_b.resize(nd);
    S.eg[l].gu_a.resize(ng), S.eg[l].gu_b.resize(ng), S.eg[l].dn_a.resize(nd), S.eg[l].dn_b.resize(nd);
  }
}

template <typename T>
Model<T>::~Model() = default;

// An RMSNorm gain (1-D, read as A: fp32 for bf16, DESIGN §8) at offset off of a unit's acc_t<T> values
// (ParamAccess::params_acc: for float/double the weights themselves).
template <typename A>
static const A* gain(const A* PA, i64 off) {
  return PA + off;
}

// Points the cached per-layer expert tables at this call's unit base (P, G may move between calls under ZeRO-3);
// the tables are sized once at construction, so no step allocates here.
// PB: the base unit (= P for full fine-tuning); adapters come from P.
template <typename T>
static ExpertWeights<T>& expert_weights(ExpertWeights<T>& w, const T* PB, const T* P, const LayerOffsets& o) {
  for (size_t e = 0; e < o.w1.size(); ++e) {
    w.w1[e] = PB + o.w1[e];
    w.w3[e] = PB + o.w3[e];
    w.w2[e] = PB + o.w2[e];
  }
  for (size_t e = 0; e < o.gu_a.size(); ++e) w.gu_a[e] = P + o.gu_a[e], w.gu_b[e] = P + o.gu_b[e];
  for (size_t e = 0; e < o.dn_a.size(); ++e) w.dn_a[e] = P + o.dn_a[e], w.dn_b[e] = P + o.dn_b[e];
  return w;
}

// frozen_base: LoRA/QLoRA (no base weight gradients: null pointers).
template <typename T, typename G>
static ExpertGrads<T>& expert_grads(ExpertGrads<T>& g, G* Gr, const LayerOffsets& o, bool frozen_base) {
  for (size_t e = 0; e < o.w1.size(); ++e) {
    g.w1[e] = frozen_base ? nullptr : Gr + o.w1[e];
    g.w3[e] = frozen_base ? nullptr : Gr + o.w3[e];
    g.w2[e] = frozen_base ? nullptr : Gr + o.w2[e];
  }
  for (size_t e = 0; e < o.gu_a.size(); ++e) g.gu_a[e] = Gr + o.gu_a[e], g.gu_b[e] = Gr + o.gu_b[e];
  for (size_t e = 0; e < o.dn_a.size(); ++e) g.dn_a[e] = Gr + o.dn_a[e], g.dn_b[e] = Gr + o.dn_b[e];
  return g;
}

// q, k, v from norm1(x) (acts.ln1) → q_norm/k_norm (Qwen3) → RoPE → attention output and lse. [C4.attention]
// LoRA forward of attention projection i (0 q, 1 k, 2 v, 3 o) when it has an adapter: y[T,out] += s·(x·Aᵀ)·Bᵀ,
// the product never formed (PEFT's lora_B(lora_A(dropout(x))) · scaling; u = s·x·Aᵀ is rounded once more under
// bf16). LoRA dropout (training only) masks x by the draw of (layer, global micro-batch, projection i).
template <typename T>
void Model<T>::lora_forward(T* y, const T* x, const T* P, int l, int i, i64 in, i64 out) {
  Impl& S = *impl_;
  const LayerOffsets& o = S.off[l];
  if (o.lora_a[i] < 0) return;
  const i64 Tn = B_ * L_, r = S.lora_r;
  if (const LoraDropout d = attention_dropout(l, i); d.p > 0) {
    ops_.lora_dropout(S.ldx, x, Tn, in, d);
    x = S.ldx;
  }
  ops_.linear_forward(S.lu, x, P + o.lora_a[i], Tn, in, r, Accumulate::Overwrite, S.ws);
  ops_.scale(S.lu, S.lu, S.lora_scale, Tn * r);
  ops_.linear_forward(y, S.lu, P + o.lora_b[i], Tn, r, out, Accumulate::Add, S.ws);
}

// Its backward given dy [T,out]: u = s·x·Aᵀ recomputed; v = dy·B (dB += dyᵀ·u); dx += s·v·A; dA += s·vᵀ·x. With
// LoRA dropout x is the masked input (the same draw regenerated) and s·v·A is masked alike before it is added.
template <typename T>
void Model<T>::lora_backward(T* dx, A* G, const T* dy, const T* x, const T* P, int l, int i, i64 in, i64 out) {
  Impl& S = *impl_;
  const LayerOffsets& o = S.off[l];
  if (o.lora_a[i] < 0) return;
  const i64 Tn = B_ * L_, r = S.lora_r;
  const LoraDropout d = attention_dropout(l, i);
  if (d.p > 0) {
    ops_.lora_dropout(S.ldx, x, Tn, in, d);
    x = S.ldx;
  }
  ops_.linear_forward(S.lu, x, P + o.lora_a[i], Tn, in, r, Accumulate::Overwrite, S.ws);
  ops_.scale(S.lu, S.lu, S.lora_scale, Tn * r);
  ops_.linear_backward(S.lv, G + o.lora_b[i], dy, S.lu, P + o.lora_b[i], Tn, r, out, Accumulate::Overwrite, S.ws);
  ops_.scale(S.lv, S.lv, S.lora_scale, Tn * r);
  if (d.p == 0)
    return ops_.linear_backward(dx, G + o.lora_a[i], S.lv, x, P + o.lora_a[i], Tn, in, r, Accumulate::Add, S.ws);
  ops_.linear_backward(S.ldd, G + o.lora_a[i], S.lv, x, P + o.lora_a[i], Tn, in, r, Accumulate::Overwrite, S.ws);
  ops_.lora_dropout(S.ldd, S.ldd, Tn, in, d);
  ops_.add(dx, dx, S.ldd, Tn * in);
}

// The LoRA dropout of attention adapter i (LoraProj Q..O) of layer l in this forward: off (p = 0) outside training.
template <typename T>
LoraDropout Model<T>::attention_dropout(int l, int i) const {
  const Impl& S = *impl_;
  if (S.lora_dropout <= 0 || mode_ != Mode::Train) return LoraDropout{};
  return LoraDropout{S.lora_dropout, rng_.seed, rng_.step, rng_stream(l, rng_.global_micro), nullptr, uint32_t(i)};
}

template <typename T>
void Model<T>::attention_core(const T* P, const A* PA, const T* PB, int l) {
  Impl& S = *impl_;
  const LayerOffsets& o = S.off[l];
  auto& a = S.acts[l];
  const i64 Tn = B_ * L_, H = m_.hidden_size, D = m_.resolved_head_dim(), NH = m_.num_heads, NKV = m_.num_kv_heads;
  const double eps = m_.rms_norm_eps;
  ops_.linear_forward(a.q, a.ln1, PB + o.q, Tn, H, NH * D, Accumulate::Overwrite, S.ws);
  lora_forward(a.q, a.ln1, P, l, 0, H, NH * D);
  ops_.linear_forward(a.k, a.ln1, PB + o.k, Tn, H, NKV * D, Accumulate::Overwrite, S.ws);
  lora_forward(a.k, a.ln1, P, l, 1, H, NKV * D);
  ops_.linear_forward(a.v, a.ln1, PB + o.v, Tn, H, NKV * D, Accumulate::Overwrite, S.ws);
  lora_forward(a.v, a.ln1, P, l, 2, H, NKV * D);
  if (o.q_norm >= 0) {
    ops_.rmsnorm_forward(a.qr, a.rstdq, a.q, gain(PA, o.q_norm), Tn * NH, D, eps);
    ops_.rmsnorm_forward(a.kr, a.rstdk, a.k, gain(PA, o.k_norm), Tn * NKV, D, eps);
  } else {
    ops_.copy(a.qr, a.q, Tn * NH * D);
    ops_.copy(a.kr, a.k, Tn * NKV * D);
  }
  ops_.rope_apply(a.qr, S.cos_t, S.sin_t, B_, L_, NH, D, RopeDirection::Forward, doc_start_);
  ops_.rope_apply(a.kr, S.cos_t, S.sin_t, B_, L_, NKV, D, RopeDirection::Forward, doc_start_);
  ops_.attention_forward(a.att, a.lse, a.qr, a.kr, a.v, B_, L_, NH, NKV, D, m_.sliding_window, doc_start_, S.ws);
}

// MLP block body from norm2(h) (acts.ln2): the MoE layer (router statistics appended to st when given) or the
// dense SwiGLU MLP. out [T,H]; null skips the dense down projection (a recomputation needs only the activations).
template <typename T>
void Model<T>::mlp_forward(const T* P, const A* PA, const T* PB, int l, T* out, Mode mode, MicroStats* st) {
  Impl& S = *impl_;
  const LayerOffsets& o = S.off[l];
  auto& a = S.acts[l];
  const i64 Tn = B_ * L_, H = m_.hidden_size, ID = m_.intermediate_size;
  if (o.moe_index >= 0) {
    RngCtx r = rng_;
    r.layer = l;
    const float* b = bias_.empty() || bias_[o.moe_index].empty() ? nullptr : bias_[o.moe_index].data();
    auto& layer = moe_layer(o.moe_index);
    layer.forward(out ? out : S.mlp_out, a.ln2, PA + o.router, expert_weights(S.ew[l], PB, P, o), b, r, mode);
    if (st) st->router[o.moe_index] = layer.stats();  // same sizes every step: no allocation
    if (topk_capture_) {
      std::vector<int>& dst = (*topk_capture_)[size_t(o.moe_index)];
      be_.mem->to_host(dst.data(), layer.plan().topk_idx.data(), i64(dst.size() * sizeof(int)));
    }
  } else {
    ops_.linear_forward(a.mlp_g, a.ln2, PB + o.dg, Tn, H, ID, Accumulate::Overwrite, S.ws);
    ops_.linear_forward(a.mlp_u, a.ln2, PB + o.du, Tn, H, ID, Accumulate::Overwrite, S.ws);
    ops_.swiglu_forward(a.mlp_a, a.mlp_g, a.mlp_u, Tn * ID);
    if (out) ops_.linear_forward(out, a.mlp_a, PB + o.dd, Tn, ID, H, Accumulate::Overwrite, S.ws);
  }
}

// One decoder layer from its input acts[l].x: h = x + o_proj(attn(...)); x_next = h + MLP(norm2(h)).
// x_next null: stop after the MLP activations (the recomputation of Recompute::Full).
template <typename T>
void Model<T>::layer_forward(const T* P, const A* PA, const T* PB, int l, Mode mode, MicroStats* st) {
  Impl& S = *impl_;
  const LayerOffsets& o = S.off[l];
  auto& a = S.acts[l];
  const i64 Tn = B_ * L_, H = m_.hidden_size, D = m_.resolved_head_dim(), NH = m_.num_heads;
  const double eps = m_.rms_norm_eps;
  T* x_next = st == nullptr ? nullptr : l + 1 < m_.num_layers ? S.acts[l + 1].x : S.xf;
  ops_.rmsnorm_forward(a.ln1, a.rstd1, a.x, gain(PA, o.in_norm), Tn, H, eps);
  attention_core(P, PA, PB, l);
  ops_.linear_forward(a.h, a.att, PB + o.o, Tn, NH * D, H, Accumulate::Overwrite, S.ws);
  lora_forward(a.h, a.att, P, l, 3, NH * D, H);
  ops_.add(a.h, a.h, a.x, Tn * H);
  ops_.rmsnorm_forward(a.ln2, a.rstd2, a.h, gain(PA, o.post_norm), Tn, H, eps);
  mlp_forward(P, PA, PB, l, x_next ? S.mlp_out : nullptr, mode, st);
  if (x_next) ops_.add(x_next, a.h, S.mlp_out, Tn * H);
}

// Reruns what the recompute mode did not keep of layer l, from what it kept, with the last forward's bias, RNG
// context and mode: the same ops on the same inputs, so the same bits. Under EP the MoE forward repeats its
// all-to-alls; every rank recomputes the same layers in the same order, so the collectives match.
// contract: C6.recompute
template <typename T>
void Model<T>::recompute_layer(const T* P, const A* PA, const T* PB, int l) {
  switch (opt_.recompute) {
    case Recompute::None: return;
    case Recompute::Selective:
      mlp_forward(P, PA, PB, l, nullptr, mode_, nullptr);
      attention_core(P, PA, PB, l);
      return;
    case Recompute::Full: layer_forward(P, PA, PB, l, mode_, nullptr); return;
  }
}

// contract: C4.layer C4.attention
template <typename T>
const MicroStats& Model<T>::forward(ParamAccess<T>& access, const int32_t* inputs, const int32_t* targets,
                             const std::vector<std::vector<float>>& bias, const RngCtx& rng, Mode mode) {
  using Dir = typename ParamAccess<T>::Direction;
  const int final_unit = m_.num_layers + 1;
  Impl& S = *impl_;
  const i64 Tn = B_ * L_, H = m_.hidden_size, V = m_.vocab_size;
  const double eps = m_.rms_norm_eps;
  rng_ = rng;
  mode_ = mode;
  bias_ = bias;  // kept for backward's recomputation (capacity reused: no allocation after the first step)
  // Embedding.
  ops_.embedding_forward(S.acts[0].x, access.params(0, Dir::Forward) + S.embed, inputs, Tn, H);
  access.release(0);
  MicroStats& st = last_;
  st.tokens = Tn;
  for (int l = 0; l < m_.num_layers; ++l) {
    const T* P = access.params(l + 1, Dir::Forward);
    layer_forward(P, access.params_acc(l + 1), S.peft ? access.base(l + 1) : P, l, mode, &st);
    access.release(l + 1);
  }
  const T* PF = access.params(final_unit, Dir::Forward);
  ops_.rmsnorm_forward(S.lnf, S.rstdf, S.xf, gain(access.params_acc(final_unit), S.final_norm), Tn, H, eps);
  const T* PH = m_.tie_word_embeddings ? access.params(0, Dir::Forward) : PF;
  ops_.linear_forward(logits_, S.lnf, PH + S.lm_head, Tn, H, V, Accumulate::Overwrite, S.ws);
  access.release(final_unit);
  if (m_.tie_word_embeddings) access.release(0);
  st.ce_sum = ops_.cross_entropy_forward(logits_, targets, Tn, V);
  return st;
}

// contract: C4.aux (one layer)
double aux_loss_layer_value(const MicroStats& s, const ModelConfig& m, AuxForm form, const GlobalRouting* g,
                            size_t l) {
  const double E = m.num_experts, K = m.top_k, Tn = double(s.tokens);
  const double tokens = g ? g->tokens : Tn;
  double a = 0;
  for (int e = 0; e < m.num_experts; ++e) {
    const double c = g ? g->routed[l][e] : double(s.router[l].routed[e]);
    a += (c / tokens) * (s.router[l].prob_sum[e] / Tn);
  }
  return form == AuxForm::Layer ? (E / K) * a : E * a;
}

double z_loss_layer_value(const MicroStats& s, size_t l) { return s.router[l].lse_sq_sum / double(s.tokens); }

// contract: C4.aux
double aux_loss_value(const MicroStats& s, const ModelConfig& m, AuxForm form, const GlobalRouting* g) {
  const size_t Lm = s.router.size();
  if (Lm == 0) return 0.0;
  if (form == AuxForm::Layer) {  // the mean over layers of each layer's (E/K)·Σ_e f_e·P_e
    double total = 0;
    for (size_t l = 0; l < Lm; ++l) total += aux_loss_layer_value(s, m, form, g, l);
    return total / double(Lm);
  }
  const double E = m.num_experts, Tn = double(s.tokens);
  // HF load_balancing_loss_func: statistics pooled over layers, E · Σ_e (c_e / N) · P_e.
  double a = 0;
  for (int e = 0; e < m.num_experts; ++e) {
    double c = 0, p = 0;
    for (size_t l = 0; l < Lm; ++l) {
      c += g ? g->routed[l][e] : double(s.router[l].routed[e]);
      p += s.router[l].prob_sum[e];
    }
    const double N = double(Lm) * (g ? g->tokens : Tn);
    a += (c / N) * (p / (double(Lm) * Tn));
  }
  return E * a;
}

// contract: C4.zloss
double z_loss_value(const MicroStats& s) {
  if (s.router.empty()) return 0.0;
  double z = 0;
  for (size_t l = 0; l < s.router.size(); ++l) z += z_loss_layer_value(s, l);
  return z / double(s.router.size());
}

// contract: C4.objective
template <typename T>
void Model<T>::backward(ParamAccess<T>& access, const int32_t* inputs, const int32_t* targets, const LossScales& sc,
                        AuxForm form, const GlobalRouting* global) {
  using Dir = typename ParamAccess<T>::Direction;
  const int final_unit = m_.num_layers + 1;
  const bool tied = m_.tie_word_embeddings;
  Impl& S = *impl_;
  const i64 Tn = B_ * L_, H = m_.hidden_size, V = m_.vocab_size, D = m_.resolved_head_dim();
  const i64 NH = m_.num_heads, NKV = m_.num_kv_heads, ID = m_.intermediate_size, E = m_.num_experts;
  const double K = m_.top_k;
  // Per-layer dLoss/dprobs[t, e] of the aux term (constant over t).
  const size_t Lm = size_t(num_moe_);
  for (size_t l = 0; l < Lm; ++l) {
    for (i64 e = 0; e < E; ++e) {
      double v = 0;
      if (form == AuxForm::Layer) {
        const double f = global ? global->routed[l][e] / global->tokens : double(last_.router[l].routed[e]) / Tn;
        v = sc.aux / double(Lm) * (double(E) / K) * f / double(Tn);
      } else {
        double c = 0;
        for (size_t j = 0; j < Lm; ++j) c += global ? global->routed[j][e] : double(last_.router[j].routed[e]);
        const double N = double(Lm) * (global ? global->tokens : double(Tn));
        v = sc.aux * double(E) * (c / N) / (double(Lm) * Tn);
      }
      S.aux_dp[l][e] = v;
    }
  }
  const double z_scale = Lm ? sc.z / double(Lm) : 0.0;

  // Loss → logits → final norm.
  ops_.cross_entropy_backward_inplace(logits_, targets, Tn, V, sc.ce);
  {
    const T* PF = access.params(final_unit, Dir::Backward);
    A* GF = access.grads(final_unit);
    const T* PH = tied ? access.params(0, Dir::Backward) : PF;
    A* GH = tied ? access.grads(0) : GF;  // tied: unit 0's gradients stay open until the embedding
    ops_.linear_backward(S.dln, S.head_trainable ? GH + S.lm_head : nullptr, logits_, S.lnf, PH + S.lm_head, Tn, H, V,
                         Accumulate::Overwrite, S.ws);
    ops_.rmsnorm_backward(S.dres, GF + S.final_norm, S.dln, S.xf, gain(access.params_acc(final_unit), S.final_norm),
                          S.rstdf, Tn, H, S.ws);
    access.grads_done(final_unit);
    access.release(final_unit);
    if (tied) access.release(0);
  }

  for (int l = m_.num_layers - 1; l >= 0; --l) {
    const LayerOffsets& o = S.off[l];
    auto& a = S.acts[l];
    const T* P = access.params(l + 1, Dir::Backward);
    const A* PA = access.params_acc(l + 1);
    const T* PB = S.peft ? access.base(l + 1) : P;
    A* G = access.grads(l + 1);
    // Weight gradients of the base linears (null: frozen under LoRA/QLoRA, the weight-gradient GEMMs are skipped).
    auto gb = [&](i64 off) { return S.peft ? nullptr : G + off; };
    recompute_layer(P, PA, PB, l);
    // MLP block: dres is d(out); d(h) = dres + norm2ᵀ(MLPᵀ(dres)).
    if (o.moe_index >= 0) {
      moe_layer(o.moe_index)
          .backward(S.dln, S.dres, PA + o.router, expert_weights(S.ew[l], PB, P, o), G + o.router,
                    expert_grads(S.eg[l], G, o, S.peft), S.aux_dp[o.moe_index].data(), z_scale);
    } else {
      ops_.linear_backward(S.da, gb(o.dd), S.dres, a.mlp_a, PB + o.dd, Tn, ID, H, Accumulate::Overwrite, S.ws);
      ops_.swiglu_backward(S.dg, S.du, S.da, a.mlp_g, a.mlp_u, Tn * ID);
      ops_.linear_backward(S.dln, gb(o.dg), S.dg, a.ln2, PB + o.dg, Tn, H, ID, Accumulate::Overwrite, S.ws);
      ops_.linear_backward(S.dln, gb(o.du), S.du, a.ln2, PB + o.du, Tn, H, ID, Accumulate::Add, S.ws);
    }
    ops_.rmsnorm_backward(S.dtmp, G + o.post_norm, S.dln, a.h, gain(PA, o.post_norm), a.rstd2, Tn, H, S.ws);
    ops_.add(S.dres, S.dres, S.dtmp, Tn * H);
    // Attention block: dres is now d(h).
    ops_.linear_backward(S.datt, gb(o.o), S.dres, a.att, PB + o.o, Tn, NH * D, H, Accumulate::Overwrite, S.ws);
    lora_backward(S.datt, G, S.dres, a.att, P, l, 3, NH * D, H);
    ops_.attention_backward(S.dq, S.dk, S.dv, S.datt, a.att, a.lse, a.qr, a.kr, a.v, B_, L_, NH, NKV, D,
                            m_.sliding_window, doc_start_, S.ws);
    ops_.rope_apply(S.dq, S.cos_t, S.sin_t, B_, L_, NH, D, RopeDirection::Inverse, doc_start_);
    ops_.rope_apply(S.dk, S.cos_t, S.sin_t, B_, L_, NKV, D, RopeDirection::Inverse, doc_start_);
    if (o.q_norm >= 0) {
      // q_norm/k_norm backward: reuse datt as the [T, NH·D] destination, then copy back.
      ops_.rmsnorm_backward(S.datt, G + o.q_norm, S.dq, a.q, gain(PA, o.q_norm), a.rstdq, Tn * NH, D, S.ws);
      ops_.copy(S.dq, S.datt, Tn * NH * D);
      ops_.rmsnorm_backward(S.datt, G + o.k_norm, S.dk, a.k, gain(PA, o.k_norm), a.rstdk, Tn * NKV, D, S.ws);
      ops_.copy(S.dk, S.datt, Tn * NKV * D);
    }
    ops_.linear_backward(S.dln, gb(o.q), S.dq, a.ln1, PB + o.q, Tn, H, NH * D, Accumulate::Overwrite, S.ws);
    lora_backward(S.dln, G, S.dq, a.ln1, P, l, 0, H, NH * D);
    ops_.linear_backward(S.dln, gb(o.k), S.dk, a.ln1, PB + o.k, Tn, H, NKV * D, Accumulate::Add, S.ws);
    lora_backward(S.dln, G, S.dk, a.ln1, P, l, 1, H, NKV * D);
    ops_.linear_backward(S.dln, gb(o.v), S.dv, a.ln1, PB + o.v, Tn, H, NKV * D, Accumulate::Add, S.ws);
    lora_backward(S.dln, G, S.dv, a.ln1, P, l, 2, H, NKV * D);
    ops_.rmsnorm_backward(S.dtmp, G + o.in_norm, S.dln, a.x, gain(PA, o.in_norm), a.rstd1, Tn, H, S.ws);
    ops_.add(S.dres, S.dres, S.dtmp, Tn * H);
    access.grads_done(l + 1);
    access.release(l + 1);
  }
  // Embedding: scatter-add in token order (deterministic). The pad_token_id row gets none (HF padding_idx).
  // A frozen embedding (LoRA/QLoRA) gets no scatter-add; its unit is still opened and closed in order.
  A* GE = access.grads(0);
  if (S.embed_trainable) ops_.embedding_backward(GE + S.embed, S.dres, inputs, Tn, H, m_.pad_token_id);
  access.grads_done(0);
}

template class Model<float>;
template class Model<double>;
template class Model<bf16>;

}  // namespace moe
