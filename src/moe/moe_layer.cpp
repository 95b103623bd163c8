// Owns the MoE block orchestration (route → plan → dispatch → experts → combine) and its random draws.
#include "moe/moe_layer.h"

#include <algorithm>

namespace moe {

template <typename T>
void MoeScratch<T>::reserve(MoeScratch& s, Arena& a, i64 Tn, i64 H, i64 E, i64 K, i64 I, i64 R) {
  const i64 TK = Tn * K;
  a.reserve(&s.dy, TK * H);
  a.reserve(&s.dye, R * H);
  a.reserve(&s.dh, R * I);
  a.reserve(&s.da, R * I);
  a.reserve(&s.db, R * I);
  a.reserve(&s.dxe, R * H);
  a.reserve(&s.dxg, TK * H);
  a.reserve(&s.dtopk_w, TK);
  a.reserve(&s.dlogits, Tn * E);
  a.reserve(&s.dxr, Tn * H);
}

template <typename T>
i64 MoeLayer<T>::max_expert_rows(i64 Tn, i64 K, const ExpertShardSpec& shard) {
  return i64(shard.ep) * Tn * K;
}

template <typename T>
MoeLayer<T>::MoeLayer(i64 Tn, i64 H, i64 E, i64 K, i64 I, const MoeConfig& cfg, TopkNorm norm,
                      const ExpertShardSpec& shard, Arena& a)
    : Tn_(Tn), H_(H), E_(E), K_(K), I_(I), cfg_(cfg), norm_(norm),
      plan_(a.plan_only() ? 0 : Tn, E, K),  // a memory plan (--dry-run) allocates no per-token routing state
      exchange_(shard.ep_comm, E, shard.count < 0 ? E : shard.count, max_expert_rows(Tn, K, shard),
                std::max(H, cfg.expert_dropout > 0 ? I : H)) {
  stats_.routed.assign(E, 0);
  stats_.prob_sum.assign(E, 0.0);
  const i64 TK = Tn * K, R = max_expert_rows(Tn, K, shard);
  if (cfg.router_jitter > 0) {
    a.reserve(&xr_, Tn * H);
    a.reserve(&noise_, Tn * H);
  }
  a.reserve(&logits_, Tn * E);
  a.reserve(&probs_, Tn * E);
  a.reserve(&topk_w_, TK);
  a.reserve(&xg_, TK * H);
  a.reserve(&xe_, R * H);
  a.reserve(&mlp_.a, R * I);
  a.reserve(&mlp_.b, R * I);
  a.reserve(&mlp_.hact, R * I);
  a.reserve(&ye_, R * H);
  a.reserve(&y_, TK * H);
  if (cfg.expert_dropout > 0) {
    a.reserve(&mask_local_, TK * I);
    a.reserve(&mask_, R * I);
  }
}

// contract: C4.router C4.capacity C4.expert C4.combine
template <typename T>
void MoeLayer<T>::forward(T* out, const T* x, const T* Wg, const ExpertWeights<T>& w, const float* bias,
                          const RngCtx& rng, Mode mode) {
  x_ = x;
  const RouterDims d{Tn_, H_, E_, K_};
  // 1. Route. Jitter multiplies the router input only (Megatron's input jitter), U(1−ε, 1+ε).
  jitter_active_ = mode == Mode::Train && cfg_.router_jitter > 0;
  const T* xr = x;
  if (jitter_active_) {
    const Philox ph(rng.seed, RngPurpose::RouterJitter);
    const double eps = cfg_.router_jitter;
    const uint32_t stream = rng_stream(rng.layer, rng.global_micro);
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < Tn_ * H_; ++i) {
      noise_[i] = T(1.0 - eps + 2.0 * eps * ph.uniform(uint64_t(i), rng.step, stream));
      xr_[i] = x[i] * noise_[i];
    }
    xr = xr_;
  }
  router_forward<T>(logits_, probs_, plan_.topk_idx.data(), topk_w_, xr, Wg, bias, d, cfg_.router_temperature,
                    norm_);
  // 2. Plan: capacity per rank and micro-batch, stable grouping by expert.
  build_plan<T>(plan_, probs_, cfg_.capacity_factor, cfg_.drop_policy);
  // 3. Dispatch: gather rows locally, exchange counts and rows with the ranks owning the experts.
  dispatch_gather<T>(xg_, x, plan_, H_);
  exchange_.plan(plan_.counts);
  exchange_.to_experts(xe_, xg_, H_);
  // Expert dropout mask, drawn where the token lives, keyed by (micro-batch, pair t·K+k): layout-independent.
  if (mask_) {
    const bool on = mode == Mode::Train;
    const double p = cfg_.expert_dropout;
    const T keep_scale = T(1.0 / (1.0 - p));
    const Philox ph(rng.seed, RngPurpose::ExpertDropout);
    const uint32_t stream = rng_stream(rng.layer, rng.global_micro);
#pragma omp parallel for schedule(static)
    for (i64 r = 0; r < plan_.P; ++r) {
      const uint64_t pair = uint64_t(plan_.row_pair[r]);
      for (i64 i = 0; i < I_; ++i)
        mask_local_[r * I_ + i] =
            on ? (ph.uniform(pair * uint64_t(I_) + uint64_t(i), rng.step, stream) < p ? T(0) : keep_scale) : T(1);
    }
    exchange_.to_experts(mask_, mask_local_, I_);
  }
  // 4. Experts: one grouped computation over the rows of the local experts.
  expert_mlp_forward<T>(ye_, mlp_, xe_, mask_, exchange_.row_blocks(), w, H_, I_);
  // 5. Combine: rows back to their ranks, weighted sum per token.
  exchange_.from_experts(y_, ye_, H_);
  combine_forward<T>(out, y_, topk_w_, plan_, H_);

  // Statistics for aux/z losses and router health.
  stats_.routed = plan_.routed;
  std::fill(stats_.prob_sum.begin(), stats_.prob_sum.end(), 0.0);
  for (i64 t = 0; t < Tn_; ++t)
    for (i64 e = 0; e < E_; ++e) stats_.prob_sum[e] += double(probs_[t * E_ + e]);
  stats_.lse_sq_sum = router_lse_sq_sum<T>(logits_, Tn_, E_);
  stats_.dropped = plan_.dropped;
  stats_.pairs = Tn_ * K_;
}

// Backward mirrors forward with the saved plan and exchange layout: combineᵀ → to experts → MLPᵀ → back → dispatchᵀ.
template <typename T>
void MoeLayer<T>::backward(T* dx, const T* dout, const T* Wg, const ExpertWeights<T>& w, T* dWg, ExpertGrads<T>& g,
                           const double* aux_dp, double z_scale, MoeScratch<T>& s) {
  const RouterDims d{Tn_, H_, E_, K_};
  const T* xr = jitter_active_ ? xr_ : x_;
  combine_backward<T>(s.dy, s.dtopk_w, dout, y_, topk_w_, plan_, H_);
  exchange_.to_experts(s.dye, s.dy, H_);
  expert_mlp_backward<T>(s.dxe, g, s.dh, s.da, s.db, s.dye, mlp_, xe_, mask_, exchange_.row_blocks(), w, H_, I_);
  exchange_.from_experts(s.dxg, s.dxe, H_);
  std::fill(dx, dx + Tn_ * H_, T(0));
  dispatch_scatter_add<T>(dx, s.dxg, plan_, H_);
  // Router: experts' backward gave dtopk_w; add the aux and z terms.
  router_backward<T>(s.dxr, dWg, s.dlogits, s.dtopk_w, logits_, probs_, plan_.topk_idx.data(), topk_w_, xr, Wg,
                     aux_dp, z_scale, d, cfg_.router_temperature, norm_);
  if (jitter_active_) {
    for (i64 i = 0; i < Tn_ * H_; ++i) dx[i] += s.dxr[i] * noise_[i];
  } else {
    for (i64 i = 0; i < Tn_ * H_; ++i) dx[i] += s.dxr[i];
  }
}

template struct MoeScratch<float>;
template struct MoeScratch<double>;
template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace moe
