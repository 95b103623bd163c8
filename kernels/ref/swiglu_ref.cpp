// Owns the CPU SwiGLU: silu(a) = a·sigmoid(a).
#include "kernels/ref/swiglu_ref.h"

#include <cmath>

namespace moe {

// contract: C4.expert
template <typename T>
void swiglu_forward_ref(T* h, const T* a, const T* b, i64 N) {
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T s = T(1) / (T(1) + std::exp(-a[n]));
    h[n] = a[n] * s * b[n];
  }
}

template <typename T>
void swiglu_backward_ref(T* da, T* db, const T* dh, const T* a, const T* b, i64 N) {
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T s = T(1) / (T(1) + std::exp(-a[n]));
    const T silu = a[n] * s;
    db[n] = dh[n] * silu;
    da[n] = dh[n] * b[n] * (s + a[n] * s * (T(1) - s));
  }
}

template void swiglu_forward_ref<float>(float*, const float*, const float*, i64);
template void swiglu_forward_ref<double>(double*, const double*, const double*, i64);
template void swiglu_backward_ref<float>(float*, float*, const float*, const float*, const float*, i64);
template void swiglu_backward_ref<double>(double*, double*, const double*, const double*, const double*, i64);

}  // namespace moe
