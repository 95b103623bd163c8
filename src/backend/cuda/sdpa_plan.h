// Owns the host-side plan of cuDNN's fused attention (cudnn_sdpa.cpp): which shapes are offered to cuDNN, the
// [B, H, S, D] views of our row-major tensors and the mask bounds. Pure host code without CUDA or cuDNN headers, so
// that a CPU unit test checks it (tests/unit/test_sdpa_plan.cpp). [C4.attention]
#pragma once
#include <array>
#include <cstdint>

#include "core/dims.h"

namespace moe {

// One attention shape of DenseOps::attention_* (letters of core/dims.h; window ≤ 0: no sliding window).
struct SdpaShape {
  i64 B = 0, L = 0, NH = 0, NKV = 0, D = 0, window = 0;
  bool operator<(const SdpaShape& o) const {
    const std::array<i64, 6> a{B, L, NH, NKV, D, window}, b{o.B, o.L, o.NH, o.NKV, o.D, o.window};
    return a < b;
  }
};

// The storage type of the op table asking.
enum class SdpaElem { Bf16, F32 };

// A tensor as cuDNN's SDPA sees it: dims and strides (in elements) in the order [B, H, S, D].
struct SdpaView {
  std::array<i64, 4> dim, stride;
};

// q, out, dq, dout [B·L, H·D] (H = NH) and k, v, dk, dv [B·L, H·D] (H = NKV), row-major: element (b, h, s, d) lies at
// ((b·L + s)·H + h)·D + d, i.e. the BSHD layout seen through strides (no transpose copy).
inline SdpaView sdpa_view_rows(i64 B, i64 L, i64 H, i64 D) { return {{B, H, L, D}, {L * H * D, D, H * D, 1}}; }
// lse [B, NH, L] fp32 as cuDNN's softmax statistics [B, NH, L, 1]: (b, h, s, 0) at (b·NH + h)·L + s.
inline SdpaView sdpa_view_lse(i64 B, i64 L, i64 NH) { return {{B, NH, L, 1}, {NH * L, L, 1, 1}}; }

// The mask as cuDNN's diagonal band (top-left aligned): score (row i, column j) is kept when i ≥ j (right bound 0:
// causal) and, with a left bound w > 0, when j + w > i (the frontend's sliding-window rule). Query i of our
// contract sees keys max(0, i − window + 1) ≤ j ≤ i (math::attn_visible), so the left bound is the window itself;
// a window ≥ L hides nothing and is left out (plain causal).
inline i64 sdpa_left_bound(i64 window, i64 L) { return window > 0 && window < L ? window : 0; }
// Whether that band keeps (i, j) for left bound lb (0: none): the rule the unit test holds against attn_visible.
inline bool sdpa_band_keeps(i64 i, i64 j, i64 lb) { return i >= j && (lb == 0 || j + lb > i); }

// Why cuDNN is not even asked for this shape, or nullptr (ask it: cuDNN may still reject the graph, which is then
// the reason). cuDNN's bf16 flash attention needs sm80+, head_dim a multiple of 8 (16-byte rows) up to 256, and
// NH a multiple of NKV (GQA).
inline const char* sdpa_skip_reason(const SdpaShape& s, SdpaElem e, int cc_major) {
  if (e != SdpaElem::Bf16) return "cuDNN fused attention is used for bf16 only (train.precision: bf16)";
  if (cc_major < 8) return "cuDNN fused attention needs compute capability 8.0 or newer";
  if (s.B <= 0 || s.L <= 0 || s.NH <= 0 || s.NKV <= 0 || s.D <= 0) return "empty shape";
  if (s.NH % s.NKV != 0) return "NH is not a multiple of NKV";
  if (s.D % 8 != 0) return "head_dim is not a multiple of 8";
  if (s.D > 256) return "head_dim is above 256";
  return nullptr;
}

// cuDNN's kernels load 16-byte vectors: every tensor pointer of a graph must be 16-byte aligned (the frontend refuses
// to execute otherwise).
inline bool sdpa_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace moe
