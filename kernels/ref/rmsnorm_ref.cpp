// Owns the CPU RMSNorm: sums in double, result in T (HF MixtralRMSNorm / Qwen3MoeRMSNorm math).
#include "kernels/ref/rmsnorm_ref.h"

#include <cmath>
#include <vector>

namespace moe {

// contract: C4.rmsnorm
template <typename T>
void rmsnorm_forward_ref(T* y, T* rstd, const T* x, const T* w, i64 N, i64 C, double eps) {
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    double ss = 0;
    for (i64 c = 0; c < C; ++c) ss += double(xr[c]) * double(xr[c]);
    const T r = T(1.0 / std::sqrt(ss / double(C) + eps));
    rstd[n] = r;
    T* yr = y + n * C;
    for (i64 c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * r);
  }
}

template <typename T>
void rmsnorm_backward_ref(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, i64 N, i64 C) {
  // dx = r · (dx̂ − x̂ · mean(dx̂ · x̂)), dx̂ = dy · w, x̂ = x · r.
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const T* dyr = dy + n * C;
    const double r = rstd[n];
    double dot = 0;
    for (i64 c = 0; c < C; ++c) dot += double(dyr[c]) * double(w[c]) * double(xr[c]) * r;
    const double m = dot / double(C);
    T* dxr = dx + n * C;
    for (i64 c = 0; c < C; ++c) dxr[c] = T(r * (double(dyr[c]) * double(w[c]) - double(xr[c]) * r * m));
  }
  // Weight gradient: column sums, a separate pass so rows can run in parallel above.
  std::vector<double> acc(C, 0.0);
  for (i64 n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const T* dyr = dy + n * C;
    const double r = rstd[n];
    for (i64 c = 0; c < C; ++c) acc[c] += double(dyr[c]) * double(xr[c]) * r;
  }
  for (i64 c = 0; c < C; ++c) dw[c] += T(acc[c]);
}

template void rmsnorm_forward_ref<float>(float*, float*, const float*, const float*, i64, i64, double);
template void rmsnorm_forward_ref<double>(double*, double*, const double*, const double*, i64, i64, double);
template void rmsnorm_backward_ref<float>(float*, float*, const float*, const float*, const float*,
                                          const float*, i64, i64);
template void rmsnorm_backward_ref<double>(double*, double*, const double*, const double*, const double*,
                                           const double*, i64, i64);

}  // namespace moe
