// Owns causal (optionally sliding-window) GQA attention forward/backward on the CPU [C4.attention]; scale 1/sqrt(D).
#pragma once
#include "core/dims.h"

namespace moe {

// out[B·L, NH·D] = softmax(mask(Q·Kᵀ/√D)) · V per (batch, head); head h reads kv head h / (NH/NKV).
// mask: query i sees keys j ≤ i (causal), and with window N > 0 only i−N < j ≤ i (transformers'
// sliding_window_causal_mask_function); window 0 = plain causal.
// q [B·L, NH·D], k/v [B·L, NKV·D] (after RoPE); probs [B, NH, L, L] saved for backward (0 where masked).
template <typename T>
void attention_forward_ref(T* out, T* probs, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH,
                           i64 NKV, i64 D, i64 window = 0);

// dq overwritten; dk, dv overwritten (sums over the query heads sharing a kv head).
template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                            const T* probs, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window = 0);

}  // namespace moe
