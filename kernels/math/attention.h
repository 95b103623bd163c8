// Owns the mask and per-score arithmetic of causal (sliding-window) attention shared by the CPU kernel
// (kernels/ref/attention_ref.cpp) and the CUDA ones (kernels/cuda/attention.cu). [C4.attention, B6]
#pragma once
#include <math.h>

#include "core/bf16.h"
#include "core/dims.h"

namespace moe {
namespace math {

// First key query i sees: i − window + 1 (not below 0) with a sliding window (window > 0), else 0. Query i sees keys
// attn_first_key(i) ≤ j ≤ i (transformers' sliding_window_causal_mask_function).
MT_HD inline i64 attn_first_key(i64 i, i64 window) {
  return window > 0 ? (i - window + 1 > 0 ? i - window + 1 : 0) : 0;
}
// One past the last query that sees key j among L queries: min(L, j + window) with a window, else L.
MT_HD inline i64 attn_query_end(i64 j, i64 L, i64 window) { return window > 0 && j + window < L ? j + window : L; }
// Whether query i sees key j.
MT_HD inline bool attn_visible(i64 i, i64 j, i64 window) { return j <= i && j >= attn_first_key(i, window); }

// The row's log-sum-exp from its max and Σ exp(s − max) (fp32).
MT_HD inline float attn_lse(float mx, float sum) { return mx + logf(sum); }
// Online softmax statistics: (m, l) with l = Σ exp(s − m) after adding score s (m = −inf, l = 0 to start).
MT_HD inline void attn_online_add(float& m, float& l, float s) {
  if (s > m) {
    l = l * expf(m - s) + 1.f;  // m = −inf: l = 0 · 0 + 1
    m = s;
  } else {
    l += expf(s - m);
  }
}
// Merge of two online statistics (commutative bit for bit: IEEE + and · are).
MT_HD inline void attn_online_merge(float& m, float& l, float m2, float l2) {
  const float mn = m > m2 ? m : m2;
  if (mn == -INFINITY) return;  // both empty
  const float a = m == -INFINITY ? 0.f : l * expf(m - mn);
  const float b = m2 == -INFINITY ? 0.f : l2 * expf(m2 - mn);
  m = mn;
  l = a + b;
}
// Backward: dS = P · (dP − D_i) · scale, D_i = Σ_d dout_id · out_id (fp32).
MT_HD inline float attn_dscore(float p, float dp, float Di, float scale) { return p * (dp - Di) * scale; }

}  // namespace math
}  // namespace moe
