// Owns the SdpaPlan.* tests: the host-side plan of cuDNN's fused attention (src/backend/cuda/sdpa_plan.h) — the
// [B, H, S, D] views against our row-major layouts, the cuDNN band mask against the CPU's attention mask, and which
// shapes are offered to cuDNN. Runs without a GPU or cuDNN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/sdpa_plan.h"
#include "kernels/math/attention.h"

namespace moe {
namespace {

i64 offset(const SdpaView& v, i64 b, i64 h, i64 s, i64 d) {
  return b * v.stride[0] + h * v.stride[1] + s * v.stride[2] + d * v.stride[3];
}

// dense_ops.h: q [B·L, NH·D], k/v [B·L, NKV·D] row-major — row b·L + s, column h·D + d.
TEST(SdpaPlan, RowViewsAddressOurLayout) {
  struct S {
    i64 B, L, H, D;
  };
  for (S sh : {S{1, 1, 1, 8}, S{2, 37, 4, 40}, S{3, 5, 2, 128}, S{2, 70, 3, 64}}) {
    const SdpaView v = sdpa_view_rows(sh.B, sh.L, sh.H, sh.D);
    EXPECT_EQ(v.dim[0], sh.B);
    EXPECT_EQ(v.dim[1], sh.H);
    EXPECT_EQ(v.dim[2], sh.L);
    EXPECT_EQ(v.dim[3], sh.D);
    const i64 cols = sh.H * sh.D;
    for (i64 b = 0; b < sh.B; ++b)
      for (i64 h = 0; h < sh.H; ++h)
        for (i64 s = 0; s < sh.L; ++s)
          for (i64 d = 0; d < sh.D; d += 7) ASSERT_EQ(offset(v, b, h, s, d), (b * sh.L + s) * cols + h * sh.D + d);
    // The view covers the buffer exactly: the last element is the buffer's last.
    EXPECT_EQ(offset(v, sh.B - 1, sh.H - 1, sh.L - 1, sh.D - 1), sh.B * sh.L * cols - 1);
  }
}

// lse [B, NH, L] fp32 as a [B, NH, L, 1] statistics tensor.
TEST(SdpaPlan, LseViewAddressesOurLayout) {
  const i64 B = 3, L = 37, NH = 4;
  const SdpaView v = sdpa_view_lse(B, L, NH);
  EXPECT_EQ(v.dim[0], B);
  EXPECT_EQ(v.dim[1], NH);
  EXPECT_EQ(v.dim[2], L);
  EXPECT_EQ(v.dim[3], 1);
  for (i64 b = 0; b < B; ++b)
    for (i64 h = 0; h < NH; ++h)
      for (i64 s = 0; s < L; ++s) ASSERT_EQ(offset(v, b, h, s, 0), (b * NH + h) * L + s);
}

// cuDNN's band (right bound 0, left bound from the window) keeps exactly the keys the CPU attention lets a query see,
// and query i sees min(i + 1, window) keys with a window (i + 1 without).
TEST(SdpaPlan, BandMaskIsTheCpuMask) {
  for (i64 L : {1, 2, 5, 37, 70})
    for (i64 window : {0, -1, 1, 2, 3, 5, 36, 37, 38, 100}) {
      const i64 lb = sdpa_left_bound(window, L);
      EXPECT_GE(lb, 0);
      for (i64 i = 0; i < L; ++i) {
        i64 seen = 0;
        for (i64 j = 0; j < L; ++j) {
          ASSERT_EQ(sdpa_band_keeps(i, j, lb), math::attn_visible(i, j, window))
              << "L " << L << " window " << window << " i " << i << " j " << j;
          seen += sdpa_band_keeps(i, j, lb);
        }
        ASSERT_EQ(seen, window > 0 ? std::min(i + 1, window) : i + 1) << "L " << L << " window " << window;
      }
    }
  EXPECT_EQ(sdpa_left_bound(4096, 4096), 0);  // a window covering the sequence is plain causal
  EXPECT_EQ(sdpa_left_bound(4095, 4096), 4095);
}

TEST(SdpaPlan, WhichShapesAreOfferedToCudnn) {
  const SdpaShape mixtral{2, 4096, 32, 8, 128, 0}, qwen{1, 2048, 32, 4, 128, 0}, swa{2, 4096, 32, 8, 128, 4096};
  EXPECT_EQ(sdpa_skip_reason(mixtral, SdpaElem::Bf16, 9), nullptr);
  EXPECT_EQ(sdpa_skip_reason(qwen, SdpaElem::Bf16, 9), nullptr);
  EXPECT_EQ(sdpa_skip_reason(swa, SdpaElem::Bf16, 8), nullptr);
  EXPECT_EQ(sdpa_skip_reason({2, 37, 4, 2, 40, 5}, SdpaElem::Bf16, 9), nullptr);  // odd L, D = 40: cuDNN decides
  EXPECT_EQ(sdpa_skip_reason({1, 8, 2, 1, 256, 0}, SdpaElem::Bf16, 9), nullptr);
  EXPECT_NE(sdpa_skip_reason(mixtral, SdpaElem::F32, 9), nullptr);              // fp32 I/O: hand kernel
  EXPECT_NE(sdpa_skip_reason(mixtral, SdpaElem::Bf16, 7), nullptr);             // pre-Ampere
  EXPECT_NE(sdpa_skip_reason({2, 37, 4, 2, 36, 0}, SdpaElem::Bf16, 9), nullptr);  // 72-byte rows
  EXPECT_NE(sdpa_skip_reason({2, 37, 4, 2, 264, 0}, SdpaElem::Bf16, 9), nullptr);
  EXPECT_NE(sdpa_skip_reason({2, 37, 6, 4, 64, 0}, SdpaElem::Bf16, 9), nullptr);  // NH not a multiple of NKV
  EXPECT_NE(sdpa_skip_reason({0, 37, 4, 2, 64, 0}, SdpaElem::Bf16, 9), nullptr);
}

TEST(SdpaPlan, PointerAlignment) {
  alignas(16) static unsigned char buf[64];
  EXPECT_TRUE(sdpa_aligned(buf));
  EXPECT_TRUE(sdpa_aligned(buf + 32));
  EXPECT_FALSE(sdpa_aligned(buf + 2));  // a bf16 element off
  EXPECT_FALSE(sdpa_aligned(buf + 8));
}

}  // namespace
}  // namespace moe
