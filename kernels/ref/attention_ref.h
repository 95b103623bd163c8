// Owns causal GQA attention forward/backward on the CPU [C4.attention]; scale 1/sqrt(D).
#pragma once
#include "core/dims.h"

namespace moe {

// out[B·L, NH·D] = softmax(causal(Q·Kᵀ/√D)) · V per (batch, head); head h reads kv head h / (NH/NKV).
// q [B·L, NH·D], k/v [B·L, NKV·D] (after RoPE); probs [B, NH, L, L] saved for backward.
template <typename T>
void attention_forward_ref(T* out, T* probs, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH,
                           i64 NKV, i64 D);

// dq overwritten; dk, dv overwritten (sums over the query heads sharing a kv head).
template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                            const T* probs, i64 B, i64 L, i64 NH, i64 NKV, i64 D);

}  // namespace moe
