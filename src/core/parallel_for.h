// Owns the size-guarded parallel loop: OpenMP above a threshold, a plain loop below.
#pragma once
#include "core/dims.h"

namespace moe {

// body(i) for i in [0, n): an OpenMP static loop when n > threshold, else a plain loop with no OpenMP region at
// all (`#pragma omp parallel if (false)` still starts a one-thread team, and libgomp allocates one per call).
template <typename F>
inline void parallel_for_above(i64 n, i64 threshold, F&& body) {
  if (n > threshold) {
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) body(i);
  } else {
    for (i64 i = 0; i < n; ++i) body(i);
  }
}

}  // namespace moe
