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
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (i64 i = begin; i < end; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + (i - begin), 4);
    uint64_t z = (uint64_t(i) << 32 | bits) + 0x9E3779B97F4A7C15ull;  // splitmix64 of (index, value)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    total += z ^ (z >> 31);
  }
  return total;  // integer sum: exact and order-independent, also under OpenMP
}

}  // namespace moe
