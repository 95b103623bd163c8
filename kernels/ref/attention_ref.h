// Owns causal (optionally sliding-window) GQA attention forward/backward on the CPU [C4.attention]; scale 1/sqrt(D).
#pragma once
#include "core/bf16.h"
#include "core/dims.h"

namespace moe {

// Elements of acc_t<T> the attention kernels need as workspace `ws` for these shapes: one slot per OpenMP thread
// (omp_get_max_threads() now; plan it once, before step 0, under the thread setting the kernels run with: the
// trainer never changes it). Float/double: 2·64·Lw per thread, Lw = min(L, 64 + window − 1) with a window, else L;
// bf16 adds 6·L·D + 64·D per thread (fp32 copies of q/k/v/dout, fp32 dk/dv accumulators, one dq block).
template <typename T>
i64 attention_workspace_elems(i64 L, i64 D, i64 window);

// out[B·L, NH·D] = softmax(mask(Q·Kᵀ/√D)) · V per (batch, head); head h reads kv head h / (NH/NKV).
// mask: query i sees keys j ≤ i (causal), and with window N > 0 only i−N < j ≤ i (transformers'
// sliding_window_causal_mask_function); window 0 = plain causal. doc_start [B·L] (packed documents) or null: query i
// of sequence b also sees no key before doc_start[b·L + i] (nondecreasing within a sequence, ≤ i).
// q [B·L, NH·D], k/v [B·L, NKV·D] (after RoPE); lse [B, NH, L] = log Σ_j exp(s_ij) over the visible keys, saved
// for backward instead of the probabilities (flash-style). ws: attention_workspace_elems<T>(L, D, window) elements.
// contract: B6 (T = bf16): scores from bf16 q, k accumulated in fp32, softmax fp32, P rounded to bf16 before P·V,
// out accumulated in fp32 and rounded once. Deterministic: the same bits at any thread count.
template <typename T>
void attention_forward_ref(T* out, acc_t<T>* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH,
                           i64 NKV, i64 D, i64 window, const int32_t* doc_start, acc_t<T>* ws);

// dq overwritten; dk, dv overwritten (sums over the query heads sharing a kv head). Recomputes P = exp(s − lse)
// from q, k and lse, with D_i = Σ_d dout_id · out_id: dS = P ⊙ (dout·Vᵀ − D_i) / √D.
// contract: B6 (T = bf16): everything in fp32 (P not rounded), dq, dk, dv rounded once.
template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* out, const acc_t<T>* lse, const T* q,
                            const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window,
                            const int32_t* doc_start, acc_t<T>* ws);

}  // namespace moe
