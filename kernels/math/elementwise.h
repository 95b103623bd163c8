// Owns the per-element arithmetic of the dense elementwise ops (residual add, scale, embedding gradient) shared by the
// CPU table (src/backend/cpu/cpu_dense.cpp) and the CUDA kernels (kernels/cuda/elementwise.cu, embedding.cu).
#pragma once
#include "core/bf16.h"
#include "kernels/math/rounding.h"

namespace moe {
namespace math {

// y = a + b in A (fp32 for bf16), rounded to T once (B: residual stream).
template <typename T>
MT_HD inline T add_round(T a, T b) {
  using A = acc_t<T>;
  return T(A(a) + A(b));
}

// y = s · x in A (fp32 for bf16; s already in A), rounded to T once; never fused.
template <typename T>
MT_HD inline T scale_round(T x, acc_t<T> s) {
  using A = acc_t<T>;
  return T(rn::mul(s, A(x)));
}

// dW += dx in A (the embedding gradient, token order is the caller's).
template <typename T>
MT_HD inline acc_t<T> embed_grad_add(acc_t<T> dw, T dx) {
  return dw + acc_t<T>(dx);
}

}  // namespace math
}  // namespace moe
