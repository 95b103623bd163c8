// Owns token cross-entropy over the vocabulary (forward + in-place backward) on the CPU [C4.objective].
#pragma once
#include <cstdint>

#include "core/dims.h"

namespace moe {

// log Σ_v exp(x_v) of one row of n values, max-shifted, accumulated in double (also used by the router's z-loss).
template <typename T>
double logsumexp_row(const T* x, i64 n);

// Returns Σ_t CE_t over N rows of logits [N, V] with targets [N]; per-row losses to `losses` if non-null.
template <typename T>
double cross_entropy_forward_ref(T* losses, const T* logits, const int32_t* targets, i64 N, i64 V);

// In place: logits [N, V] → dlogits = scale · (softmax − onehot(target)).
template <typename T>
void cross_entropy_backward_inplace_ref(T* logits, const int32_t* targets, i64 N, i64 V, double scale);

}  // namespace moe
