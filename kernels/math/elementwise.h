// Owns the per-element arithmetic of the dense elementwise ops (residual add, scale, embedding gradient) shared by the
// CPU table (src/backend/cpu/cpu_dense.cpp) and the CUDA kernels (kernels/cuda/elementwise.cu, embedding.cu).
#pragma once
#include "core/bf16.h"
#include "core/rng.h"
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

// LoRA-dropout factor of element c of a C-wide row with key `key` (backend/dense_ops.h LoraDropout): 0 with
// probability p, else keep (= 1/(1−p) in A). ph = Philox(seed, RngPurpose::LoraDropout).
template <typename A>
MT_HD inline A lora_dropout_factor(const Philox& ph, uint64_t key, uint32_t tag, int64_t c, int64_t C, uint32_t step,
                                   double p, A keep) {
  const uint64_t row = key & 0xffffffffu;
  const uint32_t stream = uint32_t(key >> 32) ^ ((tag + 1u) << 27);
  return ph.uniform(row * uint64_t(C) + uint64_t(c), step, stream) < p ? A(0) : keep;
}

// The row key of row n (LoraDropout: keys[n], or (stream << 32) | n without keys).
MT_HD inline uint64_t lora_dropout_key(const int64_t* keys, uint32_t stream, int64_t n) {
  return keys ? uint64_t(keys[n]) : ((uint64_t(stream) << 32) | uint64_t(n));
}

}  // namespace math
}  // namespace moe
