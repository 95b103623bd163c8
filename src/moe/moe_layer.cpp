// Owns the MoE block orchestration and its random draws (router jitter, expert dropout).
#include "moe/moe_layer.h"

namespace moe {

template <typename T>
void MoeScratch<T>::reserve(MoeScratch& s, Arena<T>& a, i64 Tn, i64 H, i64 E, i64 K, i64 I) {
  const i64 TK = Tn * K;
  a.reserve(&s.ex.dy, TK * H);
  a.reserve(&s.ex.dh, TK * I);
  a.reserve(&s.ex.da, TK * I);
  a.reserve(&s.ex.db, TK * I);
  a.reserve(&s.ex.dxg, TK * H);
  a.reserve(&s.dtopk_w, TK);
  a.reserve(&s.dlogits, Tn * E);
  a.reserve(&s.dxr, Tn * H);
}

template <typename T>
MoeLayer<T>::MoeLayer(i64 Tn, i64 H, i64 E, i64 K, i64 I, const MoeConfig& cfg, TopkNorm norm, Arena<T>& a)
    : Tn_(Tn), H_(H), E_(E), K_(K), I_(I), cfg_(cfg), norm_(norm), plan_(Tn, E, K) {
  stats_.routed.assign(E, 0);
  stats_.prob_sum.assign(E, 0.0);
  const i64 TK = Tn * K;
  if (cfg.router_jitter > 0) {
    a.reserve(&xr_, Tn * H);
    a.reserve(&noise_, Tn * H);
  }
  a.reserve(&logits_, Tn * E);
  a.reserve(&probs_, Tn * E);
  a.reserve(&topk_w_, TK);
  a.reserve(&acts_.xg, TK * H);
  a.reserve(&acts_.a, TK * I);
  a.reserve(&acts_.b, TK * I);
  a.reserve(&acts_.hact, TK * I);
  a.reserve(&acts_.y, TK * H);
  if (cfg.expert_dropout > 0) a.reserve(&acts_.mask, TK * I);
}

// contract: C4.router C4.capacity C4.expert C4.combine
template <typename T>
void MoeLayer<T>::forward(T* out, const T* x, const T* Wg, const ExpertWeights<T>& w, const float* bias,
                          const RngCtx& rng, Mode mode) {
  x_ = x;
  const RouterDims d{Tn_, H_, E_, K_};
  // Route. Jitter multiplies the router input only (Megatron's input jitter), U(1−ε, 1+ε).
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
  // Plan (capacity, stable grouping).
  build_plan<T>(plan_, probs_, cfg_.capacity_factor, cfg_.drop_policy);
  // Expert dropout mask, keyed by the pair (t·K + k) so it does not depend on the row order.
  if (acts_.mask) {
    const bool on = mode == Mode::Train;
    const double p = cfg_.expert_dropout;
    const T keep_scale = T(1.0 / (1.0 - p));
    const Philox ph(rng.seed, RngPurpose::ExpertDropout);
    const uint32_t stream = rng_stream(rng.layer, rng.global_micro);
#pragma omp parallel for schedule(static)
    for (i64 r = 0; r < plan_.P; ++r) {
      const uint64_t pair = uint64_t(plan_.row_pair[r]);
      for (i64 i = 0; i < I_; ++i)
        acts_.mask[r * I_ + i] =
            on ? (ph.uniform(pair * uint64_t(I_) + uint64_t(i), rng.step, stream) < p ? T(0) : keep_scale) : T(1);
    }
  }
  experts_forward<T>(out, acts_, x, topk_w_, plan_, w, H_, I_);

  // Statistics for aux/z losses and router health.
  stats_.routed = plan_.routed;
  std::fill(stats_.prob_sum.begin(), stats_.prob_sum.end(), 0.0);
  for (i64 t = 0; t < Tn_; ++t)
    for (i64 e = 0; e < E_; ++e) stats_.prob_sum[e] += double(probs_[t * E_ + e]);
  stats_.lse_sq_sum = router_lse_sq_sum<T>(logits_, Tn_, E_);
  stats_.dropped = plan_.dropped;
  stats_.pairs = Tn_ * K_;
}

template <typename T>
void MoeLayer<T>::backward(T* dx, const T* dout, const T* Wg, const ExpertWeights<T>& w, T* dWg,
                           ExpertGrads<T>& g, const double* aux_dp, double z_scale, MoeScratch<T>& s) {
  const RouterDims d{Tn_, H_, E_, K_};
  const T* xr = jitter_active_ ? xr_ : x_;
  // Experts first: their backward yields dtopk_w, which the router backward needs.
  for (i64 i = 0; i < Tn_ * H_; ++i) dx[i] = 0;
  experts_backward<T>(dx, s.dtopk_w, g, s.ex, dout, acts_, topk_w_, plan_, w, H_, I_);
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
