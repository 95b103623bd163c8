// Owns the CPU router math (HF MixtralTopKRouter / Qwen3MoeTopKRouter semantics plus temperature and bias).
#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/ref/cross_entropy_ref.h"
#include "kernels/ref/gemm_ref.h"

namespace moe {

// contract: C4.router
template <typename T>
void router_forward(T* logits, T* probs, int* topk_idx, T* topk_w, const T* xr, const T* Wg, const float* bias,
                    const RouterDims& d, double temperature, TopkNorm norm) {
  const i64 E = d.E, K = d.K;
  linear_forward_ref<T>(logits, xr, Wg, d.T, d.H, E);
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < d.T; ++t) {
    const T* lg = logits + t * E;
    T* p = probs + t * E;
    double mx = double(lg[0]) / temperature;
    for (i64 e = 1; e < E; ++e) mx = std::max(mx, double(lg[e]) / temperature);
    double s = 0;
    for (i64 e = 0; e < E; ++e) s += std::exp(double(lg[e]) / temperature - mx);
    for (i64 e = 0; e < E; ++e) p[e] = T(std::exp(double(lg[e]) / temperature - mx) / s);
    // Top-k by repeated arg-max: strict '>' keeps the lower index on ties.
    // Per-thread scratch sized once (no allocation per token after the first step).
    thread_local std::vector<uint8_t> used;
    used.assign(size_t(E), 0);
    T wsum = 0;
    for (i64 k = 0; k < K; ++k) {
      i64 best = -1;
      double bv = 0;
      for (i64 e = 0; e < E; ++e) {
        if (used[e]) continue;
        const double v = double(p[e]) + (bias ? double(bias[e]) : 0.0);
        if (best < 0 || v > bv) {
          best = e;
          bv = v;
        }
      }
      used[best] = 1;
      topk_idx[t * K + k] = int(best);
      topk_w[t * K + k] = p[best];
      wsum += p[best];
    }
    if (norm == TopkNorm::Renormalize)
      for (i64 k = 0; k < K; ++k) topk_w[t * K + k] /= wsum;
  }
}

template <typename T>
void router_backward(T* dxr, T* dWg, T* dlogits, const T* dtopk_w, const T* logits, const T* probs,
                     const int* topk_idx, const T* topk_w, const T* xr, const T* Wg, const double* aux_dp,
                     double z_scale, const RouterDims& d, double temperature, TopkNorm norm) {
  const i64 E = d.E, K = d.K, Tn = d.T;
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < Tn; ++t) {
    thread_local std::vector<double> dp;
    dp.resize(size_t(E));
    const T* p = probs + t * E;
    for (i64 e = 0; e < E; ++e) dp[e] = aux_dp ? aux_dp[e] : 0.0;
    // Through the combine weights: w_k = p_k / S (Renormalize) or p_k (Raw).
    if (norm == TopkNorm::Renormalize) {
      double S = 0, wdw = 0;
      for (i64 k = 0; k < K; ++k) S += double(p[topk_idx[t * K + k]]);
      for (i64 k = 0; k < K; ++k) wdw += double(dtopk_w[t * K + k]) * double(topk_w[t * K + k]);
      for (i64 k = 0; k < K; ++k) dp[topk_idx[t * K + k]] += (double(dtopk_w[t * K + k]) - wdw) / S;
    } else {
      for (i64 k = 0; k < K; ++k) dp[topk_idx[t * K + k]] += double(dtopk_w[t * K + k]);
    }
    // Tempered softmax: dlogit = (1/τ) p ⊙ (dp − Σ p·dp).
    double pdp = 0;
    for (i64 e = 0; e < E; ++e) pdp += double(p[e]) * dp[e];
    const T* lg = logits + t * E;
    T* dl = dlogits + t * E;
    for (i64 e = 0; e < E; ++e) dl[e] = T(double(p[e]) * (dp[e] - pdp) / temperature);
    // z-loss: d/dlogit of mean_t lse² = (2/T) lse · softmax(logits) (untempered).  [C4.zloss]
    if (z_scale != 0.0) {
      const double lse = logsumexp_row<T>(lg, E);
      const double c = z_scale * 2.0 * lse / double(Tn);
      for (i64 e = 0; e < E; ++e) dl[e] += T(c * std::exp(double(lg[e]) - lse));
    }
  }
  linear_backward_ref<T>(dxr, dWg, dlogits, xr, Wg, Tn, d.H, E);
}

// contract: C4.zloss
template <typename T>
double router_lse_sq_sum(const T* logits, i64 T_, i64 E) {
  double s = 0;
  for (i64 t = 0; t < T_; ++t) {
    const double l = logsumexp_row<T>(logits + t * E, E);
    s += l * l;
  }
  return s;
}

template void router_forward<float>(float*, float*, int*, float*, const float*, const float*, const float*,
                                    const RouterDims&, double, TopkNorm);
template void router_forward<double>(double*, double*, int*, double*, const double*, const double*,
                                     const float*, const RouterDims&, double, TopkNorm);
template void router_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     const int*, const float*, const float*, const float*, const double*,
                                     double, const RouterDims&, double, TopkNorm);
template void router_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, const int*, const double*, const double*, const double*,
                                      const double*, double, const RouterDims&, double, TopkNorm);
template double router_lse_sq_sum<float>(const float*, i64, i64);
template double router_lse_sq_sum<double>(const double*, i64, i64);

}  // namespace moe
