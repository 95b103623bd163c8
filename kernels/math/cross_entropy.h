// Owns the per-row/per-element arithmetic of token cross-entropy shared by the CPU kernel
// (kernels/ref/cross_entropy_ref.cpp) and the CUDA one (kernels/cuda/cross_entropy.cu). [C4.objective]
#pragma once
#include <math.h>

#include <cstdint>

#include "core/bf16.h"
#include "core/dims.h"

namespace moe {
namespace math {

// A row's loss from its max mx, Σ_v exp(x_v − mx) and the target's logit: (mx + log sum) − x_target (double).
MT_HD inline double ce_row_loss(double mx, double sum, double x_target) { return (mx + log(sum)) - x_target; }

// One dlogit in A from kex = k · exp(x_v − mx), k = scale / Σ exp: kex, minus scale at the target (v == tgt),
// each step rounded to A; the caller rounds it to T once (B9).
template <typename A>
MT_HD inline A ce_dlogit(double kex, double scale, i64 v, int32_t tgt) {
  return v == i64(tgt) ? A(A(kex) - A(scale)) : A(kex);
}

}  // namespace math
}  // namespace moe
