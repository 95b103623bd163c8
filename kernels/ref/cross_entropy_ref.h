// Owns token cross-entropy over the vocabulary (forward + backward) on the CPU [C4.objective].
#pragma once
#include <cstdint>

#include "core/bf16.h"
#include "core/dims.h"

namespace moe {

// A target of this value marks a row that is ignored: loss 0, gradient row 0 (PyTorch's ignore_index default).
constexpr int32_t kIgnoreTarget = -100;

// log Σ_v exp(x_v) of one row of n values, max-shifted, accumulated in double (also used by the router's z-loss).
template <typename T>
double logsumexp_row(const T* x, i64 n);

// Returns Σ_t CE_t over N rows of logits [N, V] with targets [N] (kIgnoreTarget rows: 0); per-row losses to `losses`
// if non-null. T = float, double or bf16 (bf16 logits read widened, fp32-or-better arithmetic, DESIGN §8).
template <typename T>
double cross_entropy_forward_ref(T* losses, const T* logits, const int32_t* targets, i64 N, i64 V);

// dlogits [N, V] (T) = scale · (softmax(logits) − onehot(target)) from logits [N, V] in T (bf16: read widened,
// each dlogit rounded once from its fp32 value, DESIGN §8); sums in double. dlogits may alias logits (each row is
// read whole before it is written). Ignored rows: 0.
template <typename T>
void cross_entropy_backward_ref(T* dlogits, const T* logits, const int32_t* targets, i64 N, i64 V, double scale);

// In place: logits [N, V] → dlogits (cross_entropy_backward_ref with dlogits = logits).
template <typename T>
void cross_entropy_backward_inplace_ref(T* logits, const int32_t* targets, i64 N, i64 V, double scale) {
  cross_entropy_backward_ref<T>(logits, logits, targets, N, V, scale);
}

}  // namespace moe
