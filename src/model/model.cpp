// Owns the decoder forward/backward on the CPU: embedding → layers (attention, MoE or dense MLP) → norm → lm_head → CE.
#include "model/model.h"

#include <cmath>

#include "core/error.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/cross_entropy_ref.h"
#include "kernels/ref/gemm_ref.h"
#include "kernels/ref/rmsnorm_ref.h"
#include "kernels/ref/rope_ref.h"
#include "kernels/ref/swiglu_ref.h"

namespace moe {

namespace {
// Offsets of one layer's tensors in the flat parameter buffer (−1 when absent).
struct LayerOffsets {
  i64 in_norm, post_norm, q, k, v, o, q_norm = -1, k_norm = -1;
  i64 router = -1;
  std::vector<i64> w1, w3, w2;
  i64 dg = -1, du = -1, dd = -1;  // dense MLP
  int moe_index = -1;             // index into moe_layers_, −1 for dense layers
};
}  // namespace

template <typename T>
struct Model<T>::Impl {
  // Saved activations of one layer.
  struct Acts {
    T* x;       // [T,H] layer input (residual stream)
    T* ln1;     // [T,H]
    T* rstd1;   // [T]
    T* q;       // [T,NH·D] projection (before q_norm)
    T* k;       // [T,NKV·D]
    T* v;       // [T,NKV·D]
    T* rstdq;   // [T·NH] (Qwen3)
    T* rstdk;   // [T·NKV] (Qwen3)
    T* qr;      // [T,NH·D] after q_norm and RoPE
    T* kr;      // [T,NKV·D]
    acc_t<T>* lse;  // [B,NH,L] attention log-sum-exp (flash-style: no probabilities kept)
    T* att;     // [T,NH·D]
    T* h;       // [T,H] after the attention residual
    T* ln2;     // [T,H]
    T* rstd2;   // [T]
    T* mlp_g;   // [T,ID] dense layers only
    T* mlp_u;   // [T,ID]
    T* mlp_a;   // [T,ID]
  };
  std::vector<LayerOffsets> off;
  std::vector<Acts> acts;
  i64 embed = 0, final_norm = 0, lm_head = 0;
  T* xf;       // [T,H] last residual
  T* lnf;      // [T,H]
  T* rstdf;    // [T]
  T* mlp_out;  // [T,H] scratch for the MLP/MoE output
  T* cos_t;    // [L, D/2]
  T* sin_t;
  acc_t<T>* attn_ws;  // attention workspace (attention_workspace_elems)
  // Backward scratch.
  T *dres, *dtmp, *dln, *dq, *dk, *dv, *datt, *dg, *du, *da;
  MoeScratch<T> ms{};
  std::unique_ptr<MoeOps<T>> moe_ops = make_cpu_moe_ops<T>();  // until the model holds a Backend
  std::vector<std::vector<double>> aux_dp;  // [moe layer][E]
};

template <typename T>
Model<T>::Model(const ModelConfig& m, const MoeConfig& moe, i64 B, i64 L, AllocPolicy policy,
                const ExpertShardSpec& shard, i64 dense_pad, i64 expert_pad)
    : m_(m), moe_(moe), B_(B), L_(L),
      table_(build_param_table(m, ExpertRange{shard.first, shard.count}, dense_pad, expert_pad)),
      arena_(policy), impl_(std::make_unique<Impl>()) {
  Impl& S = *impl_;
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
  S.embed = rel("model.embed_tokens.weight");
  S.final_norm = rel("model.norm.weight");
  S.lm_head = m.tie_word_embeddings ? S.embed : rel("lm_head.weight");
  bool any_dense = false;
  for (int l = 0; l < m.num_layers; ++l) {
    LayerNames n = layer_names(m, l);
    LayerOffsets o;
    o.in_norm = rel(n.input_norm);
    o.post_norm = rel(n.post_norm);
    o.q = rel(n.q);
    o.k = rel(n.k);
    o.v = rel(n.v);
    o.o = rel(n.o);
    if (!n.q_norm.empty()) {
      o.q_norm = rel(n.q_norm);
      o.k_norm = rel(n.k_norm);
    }
    if (!n.router.empty()) {
      o.router = rel(n.router);
      const int e0 = shard.count < 0 ? 0 : shard.first, e1 = shard.count < 0 ? int(E) : shard.first + shard.count;
      for (int e = e0; e < e1; ++e) {
        o.w1.push_back(rel(n.w1[e]));
        o.w3.push_back(rel(n.w3[e]));
        o.w2.push_back(rel(n.w2[e]));
      }
      o.moe_index = int(moe_layers_.size());
      moe_layers_.push_back(
          std::make_unique<MoeLayer<T>>(*S.moe_ops, Tn, H, E, K, I, moe, norm, shard, S.ms, arena_));
    } else {
      o.dg = rel(n.dense_gate);
      o.du = rel(n.dense_up);
      o.dd = rel(n.dense_down);
      any_dense = true;
    }
    S.off.push_back(std::move(o));
  }
  S.acts.resize(m.num_layers);
  for (int l = 0; l < m.num_layers; ++l) {
    auto& a = S.acts[l];
    a = {};
    arena_.reserve(&a.x, Tn * H);
    arena_.reserve(&a.ln1, Tn * H);
    arena_.reserve(&a.rstd1, Tn);
    arena_.reserve(&a.q, Tn * NH * D);
    arena_.reserve(&a.k, Tn * NKV * D);
    arena_.reserve(&a.v, Tn * NKV * D);
    if (S.off[l].q_norm >= 0) {
      arena_.reserve(&a.rstdq, Tn * NH);
      arena_.reserve(&a.rstdk, Tn * NKV);
    }
    arena_.reserve(&a.qr, Tn * NH * D);
    arena_.reserve(&a.kr, Tn * NKV * D);
    arena_.reserve(&a.lse, B * NH * L);
    arena_.reserve(&a.att, Tn * NH * D);
    arena_.reserve(&a.h, Tn * H);
    arena_.reserve(&a.ln2, Tn * H);
    arena_.reserve(&a.rstd2, Tn);
    if (S.off[l].moe_index < 0) {
      arena_.reserve(&a.mlp_g, Tn * ID);
      arena_.reserve(&a.mlp_u, Tn * ID);
      arena_.reserve(&a.mlp_a, Tn * ID);
    }
  }
  arena_.reserve(&S.xf, Tn * H);
  arena_.reserve(&S.lnf, Tn * H);
  arena_.reserve(&S.rstdf, Tn);
  arena_.reserve(&S.mlp_out, Tn * H);
  arena_.reserve(&S.cos_t, L * D / 2);
  arena_.reserve(&S.sin_t, L * D / 2);
  arena_.reserve(&S.attn_ws, attention_workspace_elems<T>(L, D, m.sliding_window));
  arena_.reserve(&logits_, Tn * V);
  arena_.reserve(&S.dres, Tn * H);
  arena_.reserve(&S.dtmp, Tn * H);
  arena_.reserve(&S.dln, Tn * H);
  arena_.reserve(&S.dq, Tn * NH * D);
  arena_.reserve(&S.dk, Tn * NKV * D);
  arena_.reserve(&S.dv, Tn * NKV * D);
  arena_.reserve(&S.datt, Tn * NH * D);
  if (any_dense) {
    arena_.reserve(&S.dg, Tn * ID);
    arena_.reserve(&S.du, Tn * ID);
    arena_.reserve(&S.da, Tn * ID);
  }
  if (!moe_layers_.empty())
    MoeScratch<T>::reserve(S.ms, arena_, Tn, H, E, K, I, moe, shard);
  arena_.allocate();
  if (arena_.allocated()) rope_table_ref<T>(S.cos_t, S.sin_t, L, D, m.rope_theta);
  S.aux_dp.assign(moe_layers_.size(), std::vector<double>(E, 0.0));
}

template <typename T>
Model<T>::~Model() = default;

template <typename T>
static ExpertWeights<T> expert_weights(const T* P, const LayerOffsets& o) {
  ExpertWeights<T> w;
  for (size_t e = 0; e < o.w1.size(); ++e) {
    w.w1.push_back(P + o.w1[e]);
    w.w3.push_back(P + o.w3[e]);
    w.w2.push_back(P + o.w2[e]);
  }
  return w;
}

template <typename T>
static ExpertGrads<T> expert_grads(T* G, const LayerOffsets& o) {
  ExpertGrads<T> g;
  for (size_t e = 0; e < o.w1.size(); ++e) {
    g.w1.push_back(G + o.w1[e]);
    g.w3.push_back(G + o.w3[e]);
    g.w2.push_back(G + o.w2[e]);
  }
  return g;
}

// contract: C4.layer C4.attention
template <typename T>
MicroStats Model<T>::forward(ParamAccess<T>& access, const int32_t* inputs, const int32_t* targets,
                             const std::vector<std::vector<float>>& bias, const RngCtx& rng, Mode mode) {
  using Dir = typename ParamAccess<T>::Direction;
  const int final_unit = m_.num_layers + 1;
  Impl& S = *impl_;
  const i64 Tn = B_ * L_, H = m_.hidden_size, V = m_.vocab_size, D = m_.resolved_head_dim();
  const i64 NH = m_.num_heads, NKV = m_.num_kv_heads, ID = m_.intermediate_size;
  const double eps = m_.rms_norm_eps;
  // Embedding.
  {
    T* x0 = S.acts[0].x;
    const T* W = access.params(0, Dir::Forward) + S.embed;
#pragma omp parallel for schedule(static)
    for (i64 t = 0; t < Tn; ++t)
      for (i64 h = 0; h < H; ++h) x0[t * H + h] = W[i64(inputs[t]) * H + h];
    access.release(0);
  }
  MicroStats st;
  st.tokens = Tn;
  for (int l = 0; l < m_.num_layers; ++l) {
    const LayerOffsets& o = S.off[l];
    auto& a = S.acts[l];
    T* x_next = l + 1 < m_.num_layers ? S.acts[l + 1].x : S.xf;
    const T* P = access.params(l + 1, Dir::Forward);
    // Attention block: h = x + o_proj(attn(rope(norm(q)), rope(norm(k)), v)).
    rmsnorm_forward_ref<T>(a.ln1, a.rstd1, a.x, P + o.in_norm, Tn, H, eps);
    linear_forward_ref<T>(a.q, a.ln1, P + o.q, Tn, H, NH * D);
    linear_forward_ref<T>(a.k, a.ln1, P + o.k, Tn, H, NKV * D);
    linear_forward_ref<T>(a.v, a.ln1, P + o.v, Tn, H, NKV * D);
    if (o.q_norm >= 0) {
      rmsnorm_forward_ref<T>(a.qr, a.rstdq, a.q, P + o.q_norm, Tn * NH, D, eps);
      rmsnorm_forward_ref<T>(a.kr, a.rstdk, a.k, P + o.k_norm, Tn * NKV, D, eps);
    } else {
      std::copy(a.q, a.q + Tn * NH * D, a.qr);
      std::copy(a.k, a.k + Tn * NKV * D, a.kr);
    }
    rope_apply_ref<T>(a.qr, S.cos_t, S.sin_t, B_, L_, NH, D, RopeDirection::Forward);
    rope_apply_ref<T>(a.kr, S.cos_t, S.sin_t, B_, L_, NKV, D, RopeDirection::Forward);
    attention_forward_ref<T>(a.att, a.lse, a.qr, a.kr, a.v, B_, L_, NH, NKV, D, m_.sliding_window, S.attn_ws);
    linear_forward_ref<T>(a.h, a.att, P + o.o, Tn, NH * D, H);
    for (i64 i = 0; i < Tn * H; ++i) a.h[i] += a.x[i];
    // MLP block: out = h + MLP(norm(h)).
    rmsnorm_forward_ref<T>(a.ln2, a.rstd2, a.h, P + o.post_norm, Tn, H, eps);
    if (o.moe_index >= 0) {
      RngCtx r = rng;
      r.layer = l;
      const float* b = bias.empty() || bias[o.moe_index].empty() ? nullptr : bias[o.moe_index].data();
      auto& layer = *moe_layers_[o.moe_index];
      layer.forward(S.mlp_out, a.ln2, P + o.router, expert_weights(P, o), b, r, mode);
      st.router.push_back(layer.stats());
    } else {
      linear_forward_ref<T>(a.mlp_g, a.ln2, P + o.dg, Tn, H, ID);
      linear_forward_ref<T>(a.mlp_u, a.ln2, P + o.du, Tn, H, ID);
      swiglu_forward_ref<T>(a.mlp_a, a.mlp_g, a.mlp_u, Tn * ID);
      linear_forward_ref<T>(S.mlp_out, a.mlp_a, P + o.dd, Tn, ID, H);
    }
    for (i64 i = 0; i < Tn * H; ++i) x_next[i] = a.h[i] + S.mlp_out[i];
    access.release(l + 1);
  }
  const T* PF = access.params(final_unit, Dir::Forward);
  rmsnorm_forward_ref<T>(S.lnf, S.rstdf, S.xf, PF + S.final_norm, Tn, H, eps);
  const T* PH = m_.tie_word_embeddings ? access.params(0, Dir::Forward) : PF;
  linear_forward_ref<T>(logits_, S.lnf, PH + S.lm_head, Tn, H, V);
  access.release(final_unit);
  if (m_.tie_word_embeddings) access.release(0);
  st.ce_sum = cross_entropy_forward_ref<T>(nullptr, logits_, targets, Tn, V);
  last_ = st;
  return st;
}

// contract: C4.aux
double aux_loss_value(const MicroStats& s, const ModelConfig& m, AuxForm form, const GlobalRouting* g) {
  const size_t Lm = s.router.size();
  if (Lm == 0) return 0.0;
  const double E = m.num_experts, K = m.top_k, Tn = double(s.tokens);
  if (form == AuxForm::Layer) {
    double total = 0;
    for (size_t l = 0; l < Lm; ++l) {
      double a = 0;
      for (int e = 0; e < m.num_experts; ++e) {
        const double f = g ? g->routed[l][e] / g->tokens : double(s.router[l].routed[e]) / Tn;
        a += f * (s.router[l].prob_sum[e] / Tn);
      }
      total += (E / K) * a;
    }
    return total / double(Lm);
  }
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
  for (const auto& r : s.router) z += r.lse_sq_sum / double(s.tokens);
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
  const size_t Lm = moe_layers_.size();
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
  cross_entropy_backward_inplace_ref<T>(logits_, targets, Tn, V, sc.ce);
  {
    const T* PF = access.params(final_unit, Dir::Backward);
    T* GF = access.grads(final_unit);
    const T* PH = tied ? access.params(0, Dir::Backward) : PF;
    T* GH = tied ? access.grads(0) : GF;  // tied: unit 0's gradients stay open until the embedding
    linear_backward_ref<T>(S.dln, GH + S.lm_head, logits_, S.lnf, PH + S.lm_head, Tn, H, V);
    rmsnorm_backward_ref<T>(S.dres, GF + S.final_norm, S.dln, S.xf, PF + S.final_norm, S.rstdf, Tn, H);
    access.grads_done(final_unit);
    access.release(final_unit);
    if (tied) access.release(0);
  }

  for (int l = m_.num_layers - 1; l >= 0; --l) {
    const LayerOffsets& o = S.off[l];
    auto& a = S.acts[l];
    const T* P = access.params(l + 1, Dir::Backward);
    T* G = access.grads(l + 1);
    // MLP block: dres is d(out); d(h) = dres + norm2ᵀ(MLPᵀ(dres)).
    if (o.moe_index >= 0) {
      auto g = expert_grads(G, o);
      moe_layers_[o.moe_index]->backward(S.dln, S.dres, P + o.router, expert_weights(P, o), G + o.router, g,
                                         S.aux_dp[o.moe_index].data(), z_scale);
    } else {
      linear_backward_ref<T>(S.da, G + o.dd, S.dres, a.mlp_a, P + o.dd, Tn, ID, H);
      swiglu_backward_ref<T>(S.dg, S.du, S.da, a.mlp_g, a.mlp_u, Tn * ID);
      linear_backward_ref<T>(S.dln, G + o.dg, S.dg, a.ln2, P + o.dg, Tn, H, ID);
      linear_backward_ref<T>(S.dln, G + o.du, S.du, a.ln2, P + o.du, Tn, H, ID, T(1));
    }
    rmsnorm_backward_ref<T>(S.dtmp, G + o.post_norm, S.dln, a.h, P + o.post_norm, a.rstd2, Tn, H);
    for (i64 i = 0; i < Tn * H; ++i) S.dres[i] += S.dtmp[i];
    // Attention block: dres is now d(h).
    linear_backward_ref<T>(S.datt, G + o.o, S.dres, a.att, P + o.o, Tn, NH * D, H);
    attention_backward_ref<T>(S.dq, S.dk, S.dv, S.datt, a.att, a.lse, a.qr, a.kr, a.v, B_, L_, NH, NKV, D,
                              m_.sliding_window, S.attn_ws);
    rope_apply_ref<T>(S.dq, S.cos_t, S.sin_t, B_, L_, NH, D, RopeDirection::Inverse);
    rope_apply_ref<T>(S.dk, S.cos_t, S.sin_t, B_, L_, NKV, D, RopeDirection::Inverse);
    if (o.q_norm >= 0) {
      // q_norm/k_norm backward: reuse datt as the [T, NH·D] destination, then copy back.
      rmsnorm_backward_ref<T>(S.datt, G + o.q_norm, S.dq, a.q, P + o.q_norm, a.rstdq, Tn * NH, D);
      std::copy(S.datt, S.datt + Tn * NH * D, S.dq);
      rmsnorm_backward_ref<T>(S.datt, G + o.k_norm, S.dk, a.k, P + o.k_norm, a.rstdk, Tn * NKV, D);
      std::copy(S.datt, S.datt + Tn * NKV * D, S.dk);
    }
    linear_backward_ref<T>(S.dln, G + o.q, S.dq, a.ln1, P + o.q, Tn, H, NH * D);
    linear_backward_ref<T>(S.dln, G + o.k, S.dk, a.ln1, P + o.k, Tn, H, NKV * D, T(1));
    linear_backward_ref<T>(S.dln, G + o.v, S.dv, a.ln1, P + o.v, Tn, H, NKV * D, T(1));
    rmsnorm_backward_ref<T>(S.dtmp, G + o.in_norm, S.dln, a.x, P + o.in_norm, a.rstd1, Tn, H);
    for (i64 i = 0; i < Tn * H; ++i) S.dres[i] += S.dtmp[i];
    access.grads_done(l + 1);
    access.release(l + 1);
  }
  // Embedding: scatter-add in token order (deterministic). The pad_token_id row gets none (HF padding_idx).
  T* dE = access.grads(0) + S.embed;
  for (i64 t = 0; t < Tn; ++t) {
    if (inputs[t] == m_.pad_token_id) continue;
    for (i64 h = 0; h < H; ++h) dE[i64(inputs[t]) * H + h] += S.dres[t * H + h];
  }
  access.grads_done(0);
}

template class Model<float>;
template class Model<double>;

}  // namespace moe
