// Owns the tensor checksum of checkpoints: a position-aware hash summed mod 2^64, so shards hashed on any ranks add up to the same value.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/dims.h"

namespace moe {

// Σ_i mix(i, bits(x_i)) over flat elements [begin, end) of a tensor whose values are data[0 .. end-begin).
// Additive: the hashes of disjoint pieces sum to the hash of their union, whatever the split.
inline uint64_t piece_checksum(const float* data, i64 begin, i64 end) {
  uint64_t total = 0;
  // term_i = (bits_i | i << 32) · odd(i): one flipped bit changes its term (odd factors are invertible
  // mod 2^64), and moving a value to another index changes both terms. Two multiplies, vectorizable.
#pragma omp parallel for simd reduction(+ : total) schedule(static)
  for (i64 i = begin; i < end; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + (i - begin), 4);
    const uint64_t odd = (uint64_t(i) * 2 + 1) * 0x9E3779B97F4A7C15ull | 1ull;
    total += (uint64_t(bits) | uint64_t(i) << 32) * odd;
  }
  return total;  // integer sum: exact and order-independent, also under OpenMP
}

}  // namespace moe
