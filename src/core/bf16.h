// Owns the bfloat16 storage type: 16 bits (1 sign, 8 exponent, 7 mantissa), round-to-nearest-even from fp32.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MT_HD __host__ __device__
#else
#define MT_HD
#endif

namespace moe {

// fp32 → bf16 bits, round to nearest, ties to even (what __float2bfloat16_rn and torch's .to(bfloat16) do).
// NaN stays NaN (quiet bit set); ±inf and overflow to inf follow from the rounding.
MT_HD inline uint16_t bf16_bits_from_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

MT_HD inline float float_from_bf16_bits(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The value of f rounded to bf16, as an fp32 (exact: every bf16 is an fp32).
MT_HD inline float round_bf16(float f) { return float_from_bf16_bits(bf16_bits_from_float(f)); }

// Storage only: arithmetic converts to float (implicitly) and rounds back on assignment. Kernels keep
// intermediates in acc_t<T> (float) so a bf16 value is rounded exactly where it is stored.
struct bf16 {
  uint16_t bits;
  bf16() = default;
  MT_HD bf16(float f) : bits(bf16_bits_from_float(f)) {}
  MT_HD operator float() const { return float_from_bf16_bits(bits); }
  static MT_HD bf16 from_bits(uint16_t b) {
    bf16 x;
    x.bits = b;
    return x;
  }
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes");

// The accumulation / statistics type of a storage type: float for fp32 and bf16, double for fp64.
template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<bf16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

}  // namespace moe
