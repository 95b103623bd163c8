// Owns the AttentionCudnnGpu.* tests: cuDNN's fused attention (CudnnSdpa, bf16) against the CPU bf16 twin and the
// hand-written CUDA kernels on causal, sliding-window and GQA shapes; outputs overwritten, two runs bitwise equal,
// and the dense table routing production shapes to cuDNN. bf16 outputs compared per row (count_bad_rows: cuDNN
// rounds other intermediates than the twins), lse elementwise (count_bad_lse). Exits 77 (CTest SKIP)
// without a GPU, or when the build has no cuDNN path (no cuDNN frontend headers at configure time).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu/cpu_dense.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cudnn_sdpa.h"
#include "gpu_buffer.h"
#include "gpu_tolerance.h"
#include "kernels/cuda/dense_kernels.h"

namespace moe {
namespace {

using gpu_tol::Kind;

template <typename E>
bool same_bits(const std::vector<E>& a, const std::vector<E>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(E)) == 0;
}

// cuDNN's flash kernels round other intermediates than our twins do: the forward rounds the unnormalized
// exp(s − running max) to bf16 for P·V (the twins round the normalized P), and the backward feeds bf16 P and dS to its
// GEMMs (the CPU keeps them fp32). Each sum then carries ~2⁻⁹ relative noise per term, ~5e-3 of the row's norm (a
// torch simulation of those rounding points on the cases below gave a worst row of 5.7e-3), which the elementwise
// Bf16Gemm bound misses on a few near-zero elements of nearly every case. So cuDNN's bf16 outputs are compared per
// row (one token's head, D values) in L2: ‖got − ref‖ ≤ 2⁻⁵·‖ref‖ + 1e-3·max‖ref‖. A mask off by one key, a wrong
// GQA head map or an unscaled score gives a row error of order 1. The elementwise counts are printed, not asserted.
int count_bad_rows(const char* what, const std::vector<bf16>& got, const std::vector<bf16>& ref, i64 D) {
  if (got.size() != ref.size() || ref.size() % size_t(D) != 0) {
    std::printf("%s: size %zu vs %zu (D %ld)\n", what, got.size(), ref.size(), long(D));
    return 1;
  }
  const size_t rows = ref.size() / size_t(D);
  std::vector<double> rn(rows), dn(rows);
  double mx = 0;
  for (size_t r = 0; r < rows; ++r) {
    double a = 0, b = 0;
    for (i64 d = 0; d < D; ++d) {
      const double x = double(float(ref[r * D + d])), y = double(float(got[r * D + d]));
      a += x * x;
      b += (y - x) * (y - x);
    }
    rn[r] = std::sqrt(a);
    dn[r] = std::sqrt(b);  // NaN stays NaN: fails the bound below
    mx = std::fmax(mx, rn[r]);
  }
  int bad = 0;
  double worst = 0;
  for (size_t r = 0; r < rows; ++r) {
    const double tol = std::ldexp(rn[r], -5) + 1e-3 * mx;
    worst = std::fmax(worst, std::isfinite(dn[r]) ? dn[r] / (rn[r] + 1e-3 * mx) : INFINITY);
    if (!(dn[r] <= tol)) {
      if (bad < 5) std::printf("  %s row %zu: |d| %.3g > %.3g (|ref| %.3g)\n", what, r, dn[r], tol, rn[r]);
      ++bad;
    }
  }
  std::printf("%s: %zu rows of %ld, worst |d|/|ref| %.3g, %d outside 2^-5\n", what, rows, long(D), worst, bad);
  gpu_tol::count_bad(what, got, ref, Kind::Bf16Gemm);  // information only (see above)
  return bad;
}

// lse from a dot product summed in another order: 1e-5 relative plus 1e-5 of the largest |lse| (rows whose lse is
// near 0, e.g. row 0's single scaled score, would otherwise be held to 1e-7).
int count_bad_lse(const char* what, const std::vector<float>& got, const std::vector<float>& ref) {
  double mx = 0;
  for (float r : ref) mx = std::fmax(mx, std::fabs(double(r)));
  int bad = 0;
  for (size_t i = 0; i < ref.size() && got.size() == ref.size(); ++i) {
    const double d = std::fabs(double(got[i]) - double(ref[i])), tol = 1e-5 * std::fabs(double(ref[i])) + 1e-5 * mx;
    if (!(d <= tol)) {
      if (bad < 5) std::printf("  %s[%zu]: gpu %.9g cpu %.9g (|d| %.3g > %.3g)\n", what, i, got[i], ref[i], d, tol);
      ++bad;
    }
  }
  std::printf("%s: %zu values, %d outside tolerance\n", what, ref.size(), bad);
  return got.size() == ref.size() ? bad : 1;
}

struct Case {
  SdpaShape s;
  bool must_cudnn;  // production-like: cuDNN is expected to take both directions on sm80+
};

class AttentionCudnnGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx = std::make_unique<CudaContext>(0);
    sdpa = std::make_unique<CudnnSdpa>(*ctx);
    cpu = make_cpu_dense_ops<bf16>();
  }
  std::vector<bf16> rnd(size_t n) {
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<bf16> v(n);
    for (auto& e : v) e = bf16(float(nd(g)));
    return v;
  }
  cudaStream_t st() const { return ctx->stream; }
  std::unique_ptr<CudaContext> ctx;
  std::unique_ptr<CudnnSdpa> sdpa;
  std::unique_ptr<DenseOps<bf16>> cpu;
  std::mt19937_64 g{77};
};

// Production-like shapes (head_dim 64/128, GQA 4:1 and 1:1, a sliding window) must be on cuDNN; odd shapes (L = 1,
// odd L, D = 40) may be refused per direction and are then checked only where cuDNN took them.
TEST_F(AttentionCudnnGpu, MatchesCpuTwinAndHandKernel) {
  const Case cases[] = {{{2, 256, 8, 2, 128, 0}, true},  {{1, 512, 4, 4, 64, 0}, true},
                        {{2, 256, 8, 2, 128, 64}, true}, {{1, 192, 4, 1, 128, 0}, true},
                        {{2, 37, 4, 2, 40, 5}, false},   {{1, 70, 3, 3, 64, 0}, false},
                        {{1, 45, 2, 1, 128, 16}, false}, {{1, 1, 2, 1, 16, 0}, false}};
  int on_cudnn = 0;
  for (const Case& c : cases) {
    const SdpaShape& s = c.s;
    const i64 B = s.B, L = s.L, NH = s.NH, NKV = s.NKV, D = s.D, win = s.window;
    SCOPED_TRACE(testing::Message() << "B " << B << " L " << L << " NH " << NH << " NKV " << NKV << " D " << D
                                    << " window " << win);
    const CudnnSdpa::Plan plan = sdpa->prepare(s, SdpaElem::Bf16);
    std::printf("shape B %ld L %ld NH %ld NKV %ld D %ld window %ld: cuDNN forward %d backward %d ws %ld B%s%s\n",
                long(B), long(L), long(NH), long(NKV), long(D), long(win), int(plan.fwd), int(plan.bwd),
                long(plan.ws_bytes), plan.why.empty() ? "" : "; why: ", plan.why.c_str());
    if (c.must_cudnn && ctx->cc_major >= 8) {
      EXPECT_TRUE(plan.fwd) << plan.why;
      EXPECT_TRUE(plan.bwd) << plan.why;
    }
    on_cudnn += plan.fwd + plan.bwd;

    auto q = rnd(B * L * NH * D), k = rnd(B * L * NKV * D), v = rnd(B * L * NKV * D), dout = rnd(B * L * NH * D);
    std::vector<bf16> out(q.size()), dq(q.size()), dk(k.size()), dv(v.size());
    std::vector<float> lse(B * NH * L);
    std::vector<float> cws(size_t(cpu->attention_workspace_bytes(B, L, NH, NKV, D, win) / 4 + 16));
    cpu->attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D, win, nullptr, cws.data());
    cpu->attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), q.data(), k.data(),
                            v.data(), B, L, NH, NKV, D, win, nullptr, cws.data());

    Dev<bf16> gq(q), gk(k), gv(v), gdo(dout), cout_(out), gout(out), hout(out), gdq(dq), gdk(dk), gdv(dv), hdq(dq),
        hdk(dk), hdv(dv);
    Dev<float> clse(lse), glse(lse), hlse(lse);
    Dev<char> ws(std::vector<char>(size_t(plan.ws_bytes) + 16));
    Dev<char> hws(std::vector<char>(size_t(attention_cuda_workspace_bytes(B, L, NH)) + 16));

    // The hand kernels on the same inputs: the second twin.
    attention_forward_cuda<bf16>(hout.p, hlse.p, gq.p, gk.p, gv.p, B, L, NH, NKV, D, win, st());
    attention_backward_cuda<bf16>(hdq.p, hdk.p, hdv.p, gdo.p, cout_.p, clse.p, gq.p, gk.p, gv.p, B, L, NH, NKV, D, win,
                                  hws.p, st());
    const std::vector<bf16> hout_h = hout.back(st()), hdq_h = hdq.back(st()), hdk_h = hdk.back(st()),
                            hdv_h = hdv.back(st());
    const std::vector<float> hlse_h = hlse.back(st());

    if (plan.fwd) {
      gout.poison();
      glse.poison();
      ASSERT_TRUE(sdpa->forward(s, gout.p, glse.p, gq.p, gk.p, gv.p, ws.p));
      const std::vector<bf16> o1 = gout.back(st());
      const std::vector<float> l1 = glse.back(st());
      EXPECT_EQ(count_bad_rows("cudnn out vs cpu", o1, out, D), 0);
      EXPECT_EQ(count_bad_lse("cudnn lse vs cpu", l1, lse), 0);
      EXPECT_EQ(count_bad_rows("cudnn out vs hand", o1, hout_h, D), 0);
      EXPECT_EQ(count_bad_lse("cudnn lse vs hand", l1, hlse_h), 0);
      ASSERT_TRUE(sdpa->forward(s, gout.p, glse.p, gq.p, gk.p, gv.p, ws.p));
      EXPECT_TRUE(same_bits(gout.back(st()), o1)) << "forward rerun: out bits differ";
      EXPECT_TRUE(same_bits(glse.back(st()), l1)) << "forward rerun: lse bits differ";
    }
    if (plan.bwd) {
      // From the CPU's out and lse: only the backward is compared.
      gdq.poison();
      gdk.poison();
      gdv.poison();
      ASSERT_TRUE(sdpa->backward(s, gdq.p, gdk.p, gdv.p, gdo.p, cout_.p, clse.p, gq.p, gk.p, gv.p, ws.p));
      const auto dq1 = gdq.back(st()), dk1 = gdk.back(st()), dv1 = gdv.back(st());
      EXPECT_EQ(count_bad_rows("cudnn dq vs cpu", dq1, dq, D), 0);
      EXPECT_EQ(count_bad_rows("cudnn dk vs cpu", dk1, dk, D), 0);
      EXPECT_EQ(count_bad_rows("cudnn dv vs cpu", dv1, dv, D), 0);
      EXPECT_EQ(count_bad_rows("cudnn dq vs hand", dq1, hdq_h, D), 0);
      EXPECT_EQ(count_bad_rows("cudnn dk vs hand", dk1, hdk_h, D), 0);
      EXPECT_EQ(count_bad_rows("cudnn dv vs hand", dv1, hdv_h, D), 0);
      // Determinism: a second backward (outputs poisoned again) gives the same bits.
      gdq.poison();
      gdk.poison();
      gdv.poison();
      ASSERT_TRUE(sdpa->backward(s, gdq.p, gdk.p, gdv.p, gdo.p, cout_.p, clse.p, gq.p, gk.p, gv.p, ws.p));
      EXPECT_TRUE(same_bits(gdq.back(st()), dq1)) << "backward rerun: dq bits differ";
      EXPECT_TRUE(same_bits(gdk.back(st()), dk1)) << "backward rerun: dk bits differ";
      EXPECT_TRUE(same_bits(gdv.back(st()), dv1)) << "backward rerun: dv bits differ";
    }
  }
  if (ctx->cc_major >= 8) EXPECT_GT(on_cudnn, 0);
}

// The dense table takes cuDNN for a production shape: its forward/backward give the bits of the direct cuDNN calls
// (the hand kernels' bits differ), with the workspace its own query sized, at the arena's 64-byte alignment.
TEST_F(AttentionCudnnGpu, DenseTableRoutesToCudnn) {
  if (ctx->cc_major < 8) GTEST_SKIP() << "cuDNN fused attention needs sm80+";
  const SdpaShape s{2, 256, 8, 2, 128, 64};
  const i64 B = s.B, L = s.L, NH = s.NH, NKV = s.NKV, D = s.D, win = s.window;
  auto ops = make_cuda_dense_ops<bf16>(*ctx);
  const i64 ws_bytes = ops->attention_workspace_bytes(B, L, NH, NKV, D, win);
  const CudnnSdpa::Plan plan = sdpa->prepare(s, SdpaElem::Bf16);
  ASSERT_TRUE(plan.fwd && plan.bwd) << plan.why;
  EXPECT_GE(ws_bytes, plan.ws_bytes);
  EXPECT_GE(ws_bytes, attention_cuda_workspace_bytes(B, L, NH));
  auto q = rnd(B * L * NH * D), k = rnd(B * L * NKV * D), v = rnd(B * L * NKV * D), dout = rnd(B * L * NH * D);
  Dev<bf16> gq(q), gk(k), gv(v), gdo(dout), o1(dout), o2(dout), dq1(q), dk1(k), dv1(v), dq2(q), dk2(k), dv2(v);
  Dev<float> l1{std::vector<float>(B * NH * L)}, l2{std::vector<float>(B * NH * L)};
  // The model's workspace is an arena slot: 64-byte aligned, not more (Arena::kAlign). Mimic that.
  Dev<char> ws{std::vector<char>(size_t(ws_bytes) + 64)}, ws2{std::vector<char>(size_t(plan.ws_bytes) + 16)};
  char* ws64 = ws.p + 64;
  ops->attention_forward(o1.p, l1.p, gq.p, gk.p, gv.p, B, L, NH, NKV, D, win, nullptr, ws64);
  ops->attention_backward(dq1.p, dk1.p, dv1.p, gdo.p, o1.p, l1.p, gq.p, gk.p, gv.p, B, L, NH, NKV, D, win, nullptr, ws64);
  ASSERT_TRUE(sdpa->forward(s, o2.p, l2.p, gq.p, gk.p, gv.p, ws2.p));
  ASSERT_TRUE(sdpa->backward(s, dq2.p, dk2.p, dv2.p, gdo.p, o2.p, l2.p, gq.p, gk.p, gv.p, ws2.p));
  EXPECT_TRUE(same_bits(o1.back(st()), o2.back(st())));
  EXPECT_TRUE(same_bits(l1.back(st()), l2.back(st())));
  EXPECT_TRUE(same_bits(dq1.back(st()), dq2.back(st())));
  EXPECT_TRUE(same_bits(dk1.back(st()), dk2.back(st())));
  EXPECT_TRUE(same_bits(dv1.back(st()), dv2.back(st())));
}

// A tensor pointer off 16-byte alignment: cuDNN is not called (false), so the dense table runs the hand kernel.
TEST_F(AttentionCudnnGpu, MisalignedPointerDeclines) {
  const SdpaShape s{1, 128, 4, 2, 64, 0};
  const CudnnSdpa::Plan plan = sdpa->prepare(s, SdpaElem::Bf16);
  if (!plan.fwd) GTEST_SKIP() << "cuDNN did not take the shape: " << plan.why;
  const i64 nq = s.B * s.L * s.NH * s.D, nk = s.B * s.L * s.NKV * s.D;
  Dev<bf16> gq(rnd(nq + 8)), gk(rnd(nk)), gv(rnd(nk)), go(rnd(nq));
  Dev<float> gl{std::vector<float>(s.B * s.NH * s.L)};
  Dev<char> ws{std::vector<char>(size_t(plan.ws_bytes) + 16)};
  EXPECT_FALSE(sdpa->forward(s, go.p, gl.p, gq.p + 1, gk.p, gv.p, ws.p));
  EXPECT_TRUE(sdpa->forward(s, go.p, gl.p, gq.p + 8, gk.p, gv.p, ws.p));
  EXPECT_EQ(cudaStreamSynchronize(st()), cudaSuccess);
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  if (moe::cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping the cuDNN attention tests\n");
    return 77;
  }
  if (!moe::CudnnSdpa::compiled()) {
    std::printf("this build has no cuDNN attention path (no cuDNN frontend headers at configure time): skipping\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
