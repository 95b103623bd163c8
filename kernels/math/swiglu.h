// Owns the per-element arithmetic of SwiGLU (silu(a)·b) shared by the CPU kernel (kernels/ref/swiglu_ref.cpp, also on
// its GCC vector lanes: F may be a vector type) and the CUDA one (kernels/cuda/swiglu.cu). The exponential is the
// caller's (CPU: vectorized Cephes expf; CUDA: expf).
#pragma once
#include "core/bf16.h"

#if defined(__CUDACC__)
#define MT_MATH_INLINE MT_HD __forceinline__
#else
#define MT_MATH_INLINE __attribute__((always_inline)) inline
#endif

namespace moe {
namespace math {

// sigmoid(a) from e = exp(−a). [C4.expert]
template <typename F>
MT_MATH_INLINE F sigmoid_from_exp_neg(F e) {
  return 1.f / (1.f + e);
}
// h = a · s · b, s = sigmoid(a).
template <typename F>
MT_MATH_INLINE F swiglu_h(F a, F b, F s) {
  return a * s * b;
}
// ∂/∂b: dh · silu(a) = dh · (a · s).
template <typename F>
MT_MATH_INLINE F swiglu_db(F dh, F a, F s) {
  return dh * (a * s);
}
// ∂/∂a: dh · b · silu'(a), silu'(a) = s + a · s · (1 − s).
template <typename F>
MT_MATH_INLINE F swiglu_da(F dh, F a, F b, F s) {
  return dh * b * (s + a * s * (1.f - s));
}

}  // namespace math
}  // namespace moe

#undef MT_MATH_INLINE
