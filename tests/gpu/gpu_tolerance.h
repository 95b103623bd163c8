// Owns the tolerances of the GPU-vs-CPU-twin tests (ISSUE10 plan table) and one comparison helper for all GPU tests.
#pragma once
#include <cmath>
#include <cstdio>
#include <vector>

namespace moe {
namespace gpu_tol {

// What a value is, which fixes its tolerance against the CPU twin's value ref:
//   Fp32      fp32 outputs (reduction order differs):            |d| ≤ 1e-5 + 1e-5·|ref|
//   Bf16      bf16 outputs of elementwise/row arithmetic:        |d| ≤ 1 bf16 ulp of ref + 1e-6
//   Bf16Gemm  bf16 values fed by a GEMM-sized reduction:         |d| ≤ 2⁻⁷·|ref| + 1e-3·max|ref|
//   Stat      fp32 statistics (rstd, lse, losses, logits):       |d| ≤ 1e-5·|ref| + 1e-7
//   Exact     integers, copies, and sums whose order is the CPU's: d = 0
enum class Kind { Fp32, Bf16, Bf16Gemm, Stat, Exact };

// One bf16 ulp at |x|: 2^(⌊log2 |x|⌋ − 7) (8 significant bits); the smallest normal's ulp below it.
inline double bf16_ulp(double x) {
  const double a = std::fabs(x);
  if (!(a >= 1.1754943508222875e-38)) return std::ldexp(1.0, -133);
  int e = 0;
  std::frexp(a, &e);  // a = m·2^e, m ∈ [0.5, 1)
  return std::ldexp(1.0, e - 1 - 7);
}

inline double bound(Kind k, double ref, double max_abs_ref) {
  switch (k) {
    case Kind::Fp32: return 1e-5 + 1e-5 * std::fabs(ref);
    case Kind::Bf16: return bf16_ulp(ref) + 1e-6;
    case Kind::Bf16Gemm: return std::ldexp(std::fabs(ref), -7) + 1e-3 * max_abs_ref;
    case Kind::Stat: return 1e-5 * std::fabs(ref) + 1e-7;
    case Kind::Exact: return 0.0;
  }
  return 0.0;
}

// Number of elements outside the bound (NaN/inf mismatches count); prints the first five and a summary line.
template <typename G, typename R>
int count_bad(const char* what, const std::vector<G>& got, const std::vector<R>& ref, Kind k) {
  if (got.size() != ref.size()) {
    std::printf("%s: size %zu vs %zu\n", what, got.size(), ref.size());
    return 1;
  }
  double mx = 0, worst = 0;
  for (const R& r : ref) mx = std::fmax(mx, std::fabs(double(r)));
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(got[i]), r = double(ref[i]), d = std::fabs(g - r);
    const bool same_special = (std::isnan(g) && std::isnan(r)) || (std::isinf(g) && g == r);
    if (same_special) continue;
    worst = std::fmax(worst, std::isfinite(d) ? d : INFINITY);
    if (!(d <= bound(k, r, mx))) {
      if (bad < 5) std::printf("  %s[%zu]: gpu %.9g cpu %.9g (|d| %.3g > %.3g)\n", what, i, g, r, d, bound(k, r, mx));
      ++bad;
    }
  }
  std::printf("%s: %zu values, max|d| %.3g, %d outside tolerance\n", what, ref.size(), worst, bad);
  return bad;
}

}  // namespace gpu_tol
}  // namespace moe
