// Owns the per-element MoE arithmetic shared by the CPU bf16 MoE table (src/backend/cpu/cpu_moe*.cpp) and the CUDA
// MoE kernels (kernels/cuda/*.cu): router jitter, expert-dropout mask from a pair key, pair keys, combine and
// unpermute sums, the expert SwiGLU with its mask [C4.router, C4.combine, C4.expert]. MT_HD: host and device alike.
#pragma once
#include <math.h>

#include <cstdint>

#include "core/bf16.h"  // MT_HD, acc_t
#include "core/dims.h"
#include "core/rng.h"
#include "kernels/math/rounding.h"

namespace moe {
namespace moe_math {

// Router jitter factor from a uniform u ∈ [0, 1): 1 − ε + 2ε·u in double (U(1−ε, 1+ε), Megatron's input jitter).
MT_HD inline double jitter_factor(double u, double eps) {
  return rn::add(1.0 - eps, rn::mul(rn::mul(2.0, eps), u));
}

// Pair key of an expert row: (Philox stream of its source micro-batch << 32) | pair t·K + k (pair < 2^32).
MT_HD inline int64_t pair_key(uint32_t stream, int64_t pair) {
  return int64_t((uint64_t(stream) << 32) | uint64_t(pair));
}

// Expert-dropout factor of element i of the row with pair key `key` (ExpertDropout in backend/moe_ops.h):
// u = Philox(seed, ExpertDropout).uniform(pair·I + i, step, stream); 0 when u < p, else keep (= 1/(1−p) in A).
template <typename A>
MT_HD inline A dropout_factor(const Philox& ph, int64_t key, i64 i, i64 I, uint32_t step, double p, A keep) {
  const uint64_t pair = uint64_t(key) & 0xffffffffu;
  const uint32_t stream = uint32_t(uint64_t(key) >> 32);
  return ph.uniform(pair * uint64_t(I) + uint64_t(i), step, stream) < p ? A(0) : keep;
}

// Combine of one output element: Σ over the kept slots k of token t (slot order) of w[k]·y[row_k, h], accumulated
// in A from 0 (pair_row_t = pair_row + t·K, w = topk_w + t·K; row −1 = dropped). [C4.combine]
template <typename T, typename A = acc_t<T>>
MT_HD inline A combine_elem(const T* y, const A* w, const i64* pair_row_t, i64 K, i64 H, i64 h) {
  A acc = 0;
  for (i64 k = 0; k < K; ++k) {
    const i64 r = pair_row_t[k];
    if (r >= 0) acc = rn::add(acc, rn::mul(w[k], A(y[r * H + h])));
  }
  return acc;
}

// Unpermute of one element: Σ over the kept slots of token t (slot order) of dxg[row_k, h], accumulated in A from 0.
template <typename T, typename A = acc_t<T>>
MT_HD inline A unpermute_elem(const T* dxg, const i64* pair_row_t, i64 K, i64 H, i64 h) {
  A acc = 0;
  for (i64 k = 0; k < K; ++k) {
    const i64 r = pair_row_t[k];
    if (r >= 0) acc = rn::add(acc, A(dxg[r * H + h]));
  }
  return acc;
}

// Expert SwiGLU of one element in fp32: h = silu(a)·b·m with silu(a) = a·σ(a), σ(a) = 1/(1 + e^−a)
// (HF SiLU · up projection; m the dropout factor, 1 without dropout).
MT_HD inline float expert_swiglu(float a, float b, float m) {
  const float s = 1.f / (1.f + ::expf(-a));
  return a * s * b * m;
}
// Its backward for dh (already multiplied by the mask): da = dh·b·σ(a)(1 + a(1 − σ(a))), db = dh·silu(a).
MT_HD inline void expert_swiglu_backward(float& da, float& db, float dh, float a, float b) {
  const float s = 1.f / (1.f + ::expf(-a));
  db = dh * (a * s);
  da = dh * b * (s + a * s * (1.f - s));
}

// The warp's reduction order for a row dot product (CUDA combine backward): lane l sums h = l, l + 32, … serially,
// then lanes combine by the xor butterfly 16, 8, 4, 2, 1. The host twin of that order (tests compare it with a
// serial sum; the CPU tables sum serially, so GPU-vs-CPU differs by reordering only).
template <typename F>
inline float warp_order_dot(F term, i64 H) {
  float lane[32];
  for (int l = 0; l < 32; ++l) {
    float acc = 0.f;
    for (i64 h = l; h < H; h += 32) acc += term(h);
    lane[l] = acc;
  }
  for (int off = 16; off >= 1; off /= 2) {
    float nxt[32];
    for (int l = 0; l < 32; ++l) nxt[l] = lane[l] + lane[l ^ off];
    for (int l = 0; l < 32; ++l) lane[l] = nxt[l];
  }
  return lane[0];
}

}  // namespace moe_math
}  // namespace moe
