// Owns the per-row router arithmetic shared by the CPU router (src/moe/router.cpp) and the CUDA router kernels
// (kernels/cuda/router.cu): tempered softmax, top-k with ties to the lower index, top-k renormalisation, the
// backward of one row (combine weights, aux-loss and z-loss terms) and the row logsumexp [C4.router, C4.zloss].
// MT_HD: the same code runs on host and device. A = the router's arithmetic type (float; double for gradient checks).
#pragma once
#include <math.h>

#include "core/bf16.h"  // MT_HD
#include "core/dims.h"
#include "moe/router.h"  // TopkNorm

namespace moe {

// logsumexp of one row in double: max first, then Σ exp(x − max) (the order of kernels/ref logsumexp_row).
template <typename A>
MT_HD inline double router_lse_row(const A* x, i64 E) {
  double mx = double(x[0]);
  for (i64 e = 1; e < E; ++e) mx = x[e] > mx ? double(x[e]) : mx;
  double s = 0;
  for (i64 e = 0; e < E; ++e) s += ::exp(double(x[e]) - mx);
  return mx + ::log(s);
}

// p [E] = softmax(lg [E] / temperature), computed in double and rounded to A once per element
// (HF MixtralTopKRouter: softmax in fp32 or better; temperature divides the logits first).
template <typename A>
MT_HD inline void router_softmax_row(A* p, const A* lg, i64 E, double temperature) {
  double mx = double(lg[0]) / temperature;
  for (i64 e = 1; e < E; ++e) {
    const double v = double(lg[e]) / temperature;
    mx = mx < v ? v : mx;  // std::max(mx, v)
  }
  double s = 0;
  for (i64 e = 0; e < E; ++e) s += ::exp(double(lg[e]) / temperature - mx);
  for (i64 e = 0; e < E; ++e) p[e] = A(::exp(double(lg[e]) / temperature - mx) / s);
}

// Top-k of p [E] (+ bias [E] when non-null, selection only): idx [K] in descending score by repeated arg-max with a
// strict '>' (ties → lower index), w [K] = p at the selection. Needs 1 ≤ K ≤ E. No scratch: an expert already taken
// is found by scanning idx[0, k).
template <typename A>
MT_HD inline void router_topk_row(int* idx, A* w, const A* p, const float* bias, i64 E, i64 K) {
  for (i64 k = 0; k < K; ++k) {
    i64 best = -1;
    double bv = 0;
    for (i64 e = 0; e < E; ++e) {
      bool used = false;
      for (i64 j = 0; j < k; ++j) used = used || idx[j] == int(e);
      if (used) continue;
      const double v = double(p[e]) + (bias ? double(bias[e]) : 0.0);
      if (best < 0 || v > bv) {
        best = e;
        bv = v;
      }
    }
    idx[k] = int(best);
    w[k] = p[best];
  }
}

// w [K] /= Σ_k w[k] (sum in A, slot order): norm_topk_prob (HF Mixtral / Qwen3-MoE renormalisation).
template <typename A>
MT_HD inline void router_topk_renormalize(A* w, i64 K) {
  A s = 0;
  for (i64 k = 0; k < K; ++k) s += w[k];
  for (i64 k = 0; k < K; ++k) w[k] /= s;
}

// dLoss/dlogits of one token's row, dl [E] (A). Inputs: p [E] probs, lg [E] logits, idx/tw/dtw [K] the selection,
// its combine weights and their gradient; aux_dp [E] (may be null) the aux-loss gradient on probs, z_scale the
// gradient of z = mean_t lse² over Tn tokens.
//   dp[e] = aux_dp[e] + Σ_{k: idx_k = e} g_k,  g_k = (dtw_k − Σ_j dtw_j·tw_j) / Σ_j p[idx_j] (Renormalize) or dtw_k;
//   dl[e] = p[e]·(dp[e] − Σ p·dp) / τ  (+ z_scale·(2/Tn)·lse·softmax(lg)[e], untempered).
// The top-k experts are distinct, so dp[e] gets at most one g_k: computed on the fly, no [E] scratch.
template <typename A>
MT_HD inline double router_dp(i64 e, const int* idx, const double* aux_dp, i64 K, const A* dtw, double wdw,
                              double S, TopkNorm norm) {
  double v = aux_dp ? aux_dp[e] : 0.0;
  for (i64 k = 0; k < K; ++k)
    if (idx[k] == int(e)) v += norm == TopkNorm::Renormalize ? (double(dtw[k]) - wdw) / S : double(dtw[k]);
  return v;
}

template <typename A>
MT_HD inline void router_backward_row(A* dl, const A* p, const A* lg, const int* idx, const A* dtw, const A* tw,
                                      const double* aux_dp, double z_scale, i64 E, i64 K, i64 Tn,
                                      double temperature, TopkNorm norm) {
  double S = 0, wdw = 0;
  if (norm == TopkNorm::Renormalize) {
    for (i64 k = 0; k < K; ++k) S += double(p[idx[k]]);
    for (i64 k = 0; k < K; ++k) wdw += double(dtw[k]) * double(tw[k]);
  }
  double pdp = 0;
  for (i64 e = 0; e < E; ++e) pdp += double(p[e]) * router_dp<A>(e, idx, aux_dp, K, dtw, wdw, S, norm);
  for (i64 e = 0; e < E; ++e)
    dl[e] = A(double(p[e]) * (router_dp<A>(e, idx, aux_dp, K, dtw, wdw, S, norm) - pdp) / temperature);
  // z-loss: d/dlogit of mean_t lse² = (2/T) lse · softmax(logits) (untempered).  [C4.zloss]
  if (z_scale != 0.0) {
    const double lse = router_lse_row<A>(lg, E);
    const double c = z_scale * 2.0 * lse / double(Tn);
    for (i64 e = 0; e < E; ++e) dl[e] += A(c * ::exp(double(lg[e]) - lse));
  }
}

}  // namespace moe
