// Owns the CPU grouped expert computation: one GEMM triple per expert over its contiguous rows.
#include "moe/experts.h"

#include "kernels/ref/gemm_ref.h"
#include "kernels/ref/swiglu_ref.h"

namespace moe {

// contract: C4.expert C4.combine
template <typename T>
void experts_forward(T* out, ExpertActs<T>& A, const T* x, const T* topk_w, const RoutingPlan& plan,
                     const ExpertWeights<T>& w, i64 H, i64 I) {
  const i64 K = plan.K, P = plan.P;
  // Dispatch: rows grouped by expert.
#pragma omp parallel for schedule(static)
  for (i64 r = 0; r < P; ++r) {
    const T* src = x + (plan.row_pair[r] / K) * H;
    T* dst = A.xg + r * H;
    for (i64 h = 0; h < H; ++h) dst[h] = src[h];
  }
  for (i64 e = 0; e < plan.E; ++e) {
    const i64 n = plan.counts[e], off = plan.offsets[e];
    if (n == 0) continue;
    linear_forward_ref<T>(A.a + off * I, A.xg + off * H, w.w1[e], n, H, I);
    linear_forward_ref<T>(A.b + off * I, A.xg + off * H, w.w3[e], n, H, I);
    swiglu_forward_ref<T>(A.hact + off * I, A.a + off * I, A.b + off * I, n * I);
    if (A.mask)
      for (i64 i = off * I; i < (off + n) * I; ++i) A.hact[i] *= A.mask[i];
    linear_forward_ref<T>(A.y + off * H, A.hact + off * I, w.w2[e], n, I, H);
  }
  // Combine in token order, slots in order: out_t = Σ_k w_tk · y_row(t,k).
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < plan.T; ++t) {
    T* o = out + t * H;
    for (i64 h = 0; h < H; ++h) o[h] = 0;
    for (i64 k = 0; k < K; ++k) {
      const i64 r = plan.pair_row[t * K + k];
      if (r < 0) continue;
      const T wk = topk_w[t * K + k];
      const T* y = A.y + r * H;
      for (i64 h = 0; h < H; ++h) o[h] += wk * y[h];
    }
  }
}

template <typename T>
void experts_backward(T* dx, T* dtopk_w, ExpertGrads<T>& g, ExpertScratch<T>& s, const T* dout,
                      const ExpertActs<T>& A, const T* topk_w, const RoutingPlan& plan,
                      const ExpertWeights<T>& w, i64 H, i64 I) {
  const i64 K = plan.K, P = plan.P;
  // Backward of combine: dy_row = w · dout_t ; dw_tk = dout_t · y_row.
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < plan.T; ++t) {
    const T* d = dout + t * H;
    for (i64 k = 0; k < K; ++k) {
      const i64 r = plan.pair_row[t * K + k];
      if (r < 0) {
        dtopk_w[t * K + k] = 0;
        continue;
      }
      const T wk = topk_w[t * K + k];
      const T* y = A.y + r * H;
      T* dy = s.dy + r * H;
      T acc = 0;
      for (i64 h = 0; h < H; ++h) {
        acc += d[h] * y[h];
        dy[h] = wk * d[h];
      }
      dtopk_w[t * K + k] = acc;
    }
  }
  for (i64 e = 0; e < plan.E; ++e) {
    const i64 n = plan.counts[e], off = plan.offsets[e];
    if (n == 0) continue;
    linear_backward_ref<T>(s.dh + off * I, g.w2[e], s.dy + off * H, A.hact + off * I, w.w2[e], n, I, H);
    if (A.mask)
      for (i64 i = off * I; i < (off + n) * I; ++i) s.dh[i] *= A.mask[i];
    swiglu_backward_ref<T>(s.da + off * I, s.db + off * I, s.dh + off * I, A.a + off * I, A.b + off * I, n * I);
    linear_backward_ref<T>(s.dxg + off * H, g.w1[e], s.da + off * I, A.xg + off * H, w.w1[e], n, H, I);
    linear_backward_ref<T>(s.dxg + off * H, g.w3[e], s.db + off * I, A.xg + off * H, w.w3[e], n, H, I, T(1));
  }
  // Backward of dispatch = combine of row gradients back to their tokens (token order, no atomics).
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < plan.T; ++t) {
    T* d = dx + t * H;
    for (i64 k = 0; k < K; ++k) {
      const i64 r = plan.pair_row[t * K + k];
      if (r < 0) continue;
      const T* src = s.dxg + r * H;
      for (i64 h = 0; h < H; ++h) d[h] += src[h];
    }
  }
  (void)P;
}

template void experts_forward<float>(float*, ExpertActs<float>&, const float*, const float*, const RoutingPlan&,
                                     const ExpertWeights<float>&, i64, i64);
template void experts_forward<double>(double*, ExpertActs<double>&, const double*, const double*,
                                      const RoutingPlan&, const ExpertWeights<double>&, i64, i64);
template void experts_backward<float>(float*, float*, ExpertGrads<float>&, ExpertScratch<float>&, const float*,
                                      const ExpertActs<float>&, const float*, const RoutingPlan&,
                                      const ExpertWeights<float>&, i64, i64);
template void experts_backward<double>(double*, double*, ExpertGrads<double>&, ExpertScratch<double>&,
                                       const double*, const ExpertActs<double>&, const double*,
                                       const RoutingPlan&, const ExpertWeights<double>&, i64, i64);

}  // namespace moe
