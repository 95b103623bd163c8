// Owns Philox4x32-10 counter-based randomness, keyed by (seed, purpose) and indexed by (step, layer, micro-batch, element) — never by rank (STYLE habit 7).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "core/bf16.h"  // MT_HD

namespace moe {

enum class RngPurpose : uint32_t { Init = 1, RouterJitter = 2, ExpertDropout = 3, Shuffle = 4, Upcycle = 5, LoraDropout = 6 };

// Host and device alike (MT_HD): CUDA kernels draw the same numbers as the CPU ops, bit for bit (integer rounds, one
// exact scaling to double for uniform; normal uses libm/CUDA sqrt, log, cos, correctly rounded to within 1 ulp).
struct Philox {
  uint32_t k0, k1;

  MT_HD Philox(uint64_t seed, RngPurpose purpose)
      : k0(uint32_t(seed)), k1(uint32_t(seed >> 32) ^ (uint32_t(purpose) * 0x9E3779B9u)) {}

  // Four 32-bit words for counter (c0..c3).
  MT_HD void block(uint32_t c[4]) const {
    uint32_t a = k0, b = k1;
    for (int r = 0; r < 10; ++r) {
      const uint64_t p0 = uint64_t(0xD2511F53u) * c[0];
      const uint64_t p1 = uint64_t(0xCD9E8D57u) * c[2];
      const uint32_t n0 = uint32_t(p1 >> 32) ^ c[1] ^ a;
      const uint32_t n2 = uint32_t(p0 >> 32) ^ c[3] ^ b;
      c[0] = n0;
      c[1] = uint32_t(p1);
      c[2] = n2;
      c[3] = uint32_t(p0);
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
  }

  // Uniform in [0, 1) for element `index` of stream (s1, s2).
  MT_HD double uniform(uint64_t index, uint32_t s1, uint32_t s2) const {
    uint32_t c[4] = {uint32_t(index), uint32_t(index >> 32), s1, s2};
    block(c);
    const uint64_t bits = (uint64_t(c[0]) << 21) ^ uint64_t(c[1] >> 11);  // 53 bits
    return double(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
  }

  // Standard normal (Box–Muller on two uniforms of the same counter block).
  MT_HD double normal(uint64_t index, uint32_t s1, uint32_t s2) const {
    uint32_t c[4] = {uint32_t(index), uint32_t(index >> 32), s1, s2};
    block(c);
    const double u1 = (double(c[0]) + 1.0) * (1.0 / 4294967297.0);  // (0, 1)
    const double u2 = double(c[1]) * (1.0 / 4294967296.0);
    return ::sqrt(-2.0 * ::log(u1)) * ::cos(6.283185307179586 * u2);  // :: so device code finds them
  }
};

// The Philox stream of a tensor: FNV-1a of its HF name, so every layout (ranks, ep, table order) draws alike.
inline uint32_t name_stream(const std::string& name) {
  uint32_t h = 2166136261u;
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return h;
}

// Stream ids: step and (layer, global micro-batch) so 1 and N ranks draw alike.
inline uint32_t rng_stream(int layer, int global_micro) {
  return (uint32_t(layer) << 20) ^ uint32_t(global_micro);
}

}  // namespace moe
