// Owns the CPU RMSNorm: sums in double, result in T (HF MixtralRMSNorm / Qwen3MoeRMSNorm math).
#include "kernels/ref/rmsnorm_ref.h"

#include <algorithm>
#include <cmath>

#include "kernels/math/rmsnorm.h"

namespace moe {

// Σ_c f(c) over c < C in double with four interleaved partial sums (c mod 4) added in a fixed order:
// a short dependency chain, the same bits at any thread count.
template <typename F>
static inline double row_sum(i64 C, F f) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  i64 c = 0;
  for (; c + 4 <= C; c += 4) {
    a0 += f(c);
    a1 += f(c + 1);
    a2 += f(c + 2);
    a3 += f(c + 3);
  }
  if (c < C) a0 += f(c);
  if (c + 1 < C) a1 += f(c + 1);
  if (c + 2 < C) a2 += f(c + 2);
  return (a0 + a1) + (a2 + a3);
}

// contract: C4.rmsnorm, B4
template <typename T>
void rmsnorm_forward_ref(T* y, acc_t<T>* rstd, const T* x, const acc_t<T>* w, i64 N, i64 C, double eps) {
  using A = acc_t<T>;
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const double ss = row_sum(C, [&](i64 c) { return double(xr[c]) * double(xr[c]); });
    const A r = math::rmsnorm_rstd<A>(ss, C, eps);
    rstd[n] = r;
    T* yr = y + n * C;
    for (i64 c = 0; c < C; ++c) yr[c] = T(math::rmsnorm_y<A>(A(xr[c]), A(w[c]), r));
  }
}

template <typename T>
void rmsnorm_backward_ref(T* dx, acc_t<T>* dw, const T* dy, const T* x, const acc_t<T>* w, const acc_t<T>* rstd,
                          i64 N, i64 C) {
  using A = acc_t<T>;
  // dx = r · (dx̂ − x̂ · mean(dx̂ · x̂)), dx̂ = dy · w, x̂ = x · r.
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const T* dyr = dy + n * C;
    const double r = rstd[n];
    const double dot =
        row_sum(C, [&](i64 c) { return math::rmsnorm_dot_term(double(dyr[c]), double(w[c]), double(xr[c]), r); });
    const double m = dot / double(C);
    T* dxr = dx + n * C;
    for (i64 c = 0; c < C; ++c) dxr[c] = T(A(math::rmsnorm_dx(double(dyr[c]), double(w[c]), double(xr[c]), r, m)));
  }
  // Weight gradient: column sums, a separate pass so rows can run in parallel above. Threads take column
  // blocks; each column is summed in the chunked row order of math::kRmsDwRows (the CUDA kernel's): the same
  // bits at any thread count and on the GPU.
  constexpr i64 kCols = 32;
  const i64 nb = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (i64 blk = 0; blk < nb; ++blk) {
    const i64 c0 = blk * kCols, c1 = std::min(C, c0 + kCols);
    double total[kCols] = {};
    for (i64 n0 = 0; n0 < N; n0 += math::kRmsDwRows) {
      double acc[kCols] = {};
      for (i64 n = n0; n < std::min(N, n0 + math::kRmsDwRows); ++n) {
        const T* xr = x + n * C;
        const T* dyr = dy + n * C;
        const double r = rstd[n];
        for (i64 c = c0; c < c1; ++c) acc[c - c0] += math::rmsnorm_dw_term(double(dyr[c]), double(xr[c]), r);
      }
      for (i64 c = c0; c < c1; ++c) total[c - c0] += acc[c - c0];
    }
    for (i64 c = c0; c < c1; ++c) dw[c] += A(total[c - c0]);
  }
}

#define MT_RMSNORM(T)                                                                                            \
  template void rmsnorm_forward_ref<T>(T*, acc_t<T>*, const T*, const acc_t<T>*, i64, i64, double);             \
  template void rmsnorm_backward_ref<T>(T*, acc_t<T>*, const T*, const T*, const acc_t<T>*, const acc_t<T>*, i64, i64);
MT_RMSNORM(float)
MT_RMSNORM(double)
MT_RMSNORM(bf16)
#undef MT_RMSNORM

}  // namespace moe
