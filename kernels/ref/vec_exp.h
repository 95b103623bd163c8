// Owns the fp32 vector helpers of the CPU kernels: W-lane vector types and a vectorized exp (Cephes expf polynomial).
#pragma once
#include <cstdint>

namespace moe {
namespace vec {

template <int W>
struct Lanes {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
};

// x ← exp(x) on W lanes (GCC/Clang vector extensions): Cephes expf, |rel err| ≲ 1e-7 over the whole range
// (subnormal results included), overflow to +inf, -inf/underflow to 0, NaN propagates. Vector types because
// -ftrapping-math keeps GCC from if-converting the clamps of a scalar loop. By reference: no vector ABI.
template <int W>
__attribute__((always_inline)) inline void vexp(typename Lanes<W>::F& x) {
  typedef typename Lanes<W>::F F;
  typedef typename Lanes<W>::I I;
  const F lo = F{} - 104.f, hi = F{} + 88.8f;
  F xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  // n = round(x / ln 2) by the 1.5·2^23 trick; r = x − n ln 2 in two parts.
  const F fn = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const F r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
  const F z = r * r;
  F y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.f;
  // 2^n as two normal factors 2^(n/2)·2^(n−n/2): n in [−150, 128] needs no special case.
  const I n = __builtin_convertvector(fn, I), n1 = n >> 1, n2 = n - n1;
  const F e = y * (F)((n1 + 127) << 23) * (F)((n2 + 127) << 23);
  x = x != x ? x : e;
}

}  // namespace vec
}  // namespace moe
