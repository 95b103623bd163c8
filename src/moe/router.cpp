// Owns the CPU router (HF MixtralTopKRouter / Qwen3MoeTopKRouter semantics plus temperature and bias): the GEMMs here, the per-row math in kernels/math/router.h (shared with the CUDA kernels).
#include "moe/router.h"

#include "core/error.h"
#include "kernels/math/router.h"
#include "kernels/ref/gemm_ref.h"

namespace moe {

// contract: C4.router
template <typename T>
void router_forward(T* logits, T* probs, int* topk_idx, T* topk_w, const T* xr, const T* Wg, const float* bias,
                    const RouterDims& d, double temperature, TopkNorm norm) {
  const i64 E = d.E, K = d.K;
  MT_CHECK(K >= 1 && K <= E, "router top-k needs 1 <= K <= E; K = ", K, ", E = ", E);
  linear_forward_ref<T>(logits, xr, Wg, d.T, d.H, E);
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < d.T; ++t) {
    router_softmax_row<T>(probs + t * E, logits + t * E, E, temperature);
    router_topk_row<T>(topk_idx + t * K, topk_w + t * K, probs + t * E, bias, E, K);
    if (norm == TopkNorm::Renormalize) router_topk_renormalize<T>(topk_w + t * K, K);
  }
}

template <typename T>
void router_backward(T* dxr, T* dWg, T* dlogits, const T* dtopk_w, const T* logits, const T* probs,
                     const int* topk_idx, const T* topk_w, const T* xr, const T* Wg, const double* aux_dp,
                     double z_scale, const RouterDims& d, double temperature, TopkNorm norm) {
  const i64 E = d.E, K = d.K, Tn = d.T;
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < Tn; ++t)
    router_backward_row<T>(dlogits + t * E, probs + t * E, logits + t * E, topk_idx + t * K, dtopk_w + t * K,
                           topk_w + t * K, aux_dp, z_scale, E, K, Tn, temperature, norm);
  linear_backward_ref<T>(dxr, dWg, dlogits, xr, Wg, Tn, d.H, E);
}

// contract: C4.zloss
template <typename T>
double router_lse_sq_sum(const T* logits, i64 T_, i64 E) {
  double s = 0;
  for (i64 t = 0; t < T_; ++t) {
    const double l = router_lse_row<T>(logits + t * E, E);
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
