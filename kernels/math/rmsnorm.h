// Owns the per-element arithmetic of RMSNorm shared by the CPU kernel (kernels/ref/rmsnorm_ref.cpp) and the CUDA one
// (kernels/cuda/rmsnorm.cu); row sums are the caller's (double, order stated there).
#pragma once
#include <math.h>

#include "core/bf16.h"
#include "core/dims.h"

namespace moe {
namespace math {

// rstd = 1 / sqrt(ss / C + eps) from a row's sum of squares ss (double), rounded to A (fp32 for bf16). [C4.rmsnorm]
template <typename A>
MT_HD inline A rmsnorm_rstd(double ss, i64 C, double eps) {
  return A(1.0 / sqrt(ss / double(C) + eps));
}

// y = w · (x · rstd) in A; the caller rounds it to T once (B4).
template <typename A>
MT_HD inline A rmsnorm_y(A x, A w, A r) {
  return w * (x * r);
}

// Summand of the backward row dot Σ_c dx̂·x̂ = Σ_c dy · w · x · r (double).
MT_HD inline double rmsnorm_dot_term(double dy, double w, double x, double r) { return dy * w * x * r; }

// dx = r · (dy · w − x · r · m), m = (Σ_c dy·w·x·r) / C; double, rounded by the caller via A to T.
MT_HD inline double rmsnorm_dx(double dy, double w, double x, double r, double m) { return r * (dy * w - x * r * m); }

// Summand of the gain gradient dw_c = Σ_rows dy · x · r (double).
MT_HD inline double rmsnorm_dw_term(double dy, double x, double r) { return dy * x * r; }

// The order of that sum, the same on the CPU and the GPU: rows in chunks of kRmsDwRows; within a chunk in row order
// (a double from 0), then the chunk sums in chunk order (a double from 0), added to dw_c in A once. Chunks let a GPU
// spread a column over many blocks (q/k-norm: C = head_dim, N = tokens x heads) without float atomics.
constexpr i64 kRmsDwRows = 512;
MT_HD inline i64 rmsnorm_dw_chunks(i64 N) { return (N + kRmsDwRows - 1) / kRmsDwRows; }

}  // namespace math
}  // namespace moe
