// Owns the DenseGpu.* tests: every op of the CUDA dense table (bf16 and float) against the CPU table of the same
// type on random data with odd shapes (N = 1, widths not a multiple of 32, L = 1, a sliding window, NKV < NH), plus
// run-to-run determinism; tolerances from gpu_tolerance.h. Exits 77 (CTest SKIP) without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu/cpu_dense.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#include "gpu_buffer.h"
#include "gpu_tolerance.h"
#include "kernels/ref/cross_entropy_ref.h"

namespace moe {
namespace {

using gpu_tol::Kind;

template <typename T>
Kind elem_kind() {
  return std::is_same<T, bf16>::value ? Kind::Bf16 : Kind::Fp32;
}
template <typename T>
Kind gemm_kind() {
  return std::is_same<T, bf16>::value ? Kind::Bf16Gemm : Kind::Fp32;
}

template <typename T>
class DenseGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx = std::make_unique<CudaContext>(0);
    gpu = make_cuda_dense_ops<T>(*ctx);
    cpu = make_cpu_dense_ops<T>();
  }
  std::vector<T> rnd(size_t n, double sd = 1.0) {
    std::normal_distribution<double> nd(0.0, sd);
    std::vector<T> v(n);
    for (auto& e : v) e = T(float(nd(g)));
    return v;
  }
  std::vector<float> rndf(size_t n, double sd = 1.0, double mean = 0.0) {
    std::normal_distribution<double> nd(mean, sd);
    std::vector<float> v(n);
    for (auto& e : v) e = float(nd(g));
    return v;
  }
  cudaStream_t s() const { return ctx->stream; }
  template <typename G, typename R>
  void expect(const char* what, const std::vector<G>& got, const std::vector<R>& ref, Kind k) {
    EXPECT_EQ(gpu_tol::count_bad(what, got, ref, k), 0) << what;
  }
  std::mt19937_64 g{2024};
  std::unique_ptr<CudaContext> ctx;
  std::unique_ptr<DenseOps<T>> gpu, cpu;
};

using Types = ::testing::Types<bf16, float>;
TYPED_TEST_SUITE(DenseGpu, Types);

TYPED_TEST(DenseGpu, Linear) {
  using T = TypeParam;
  auto& self = *this;
  struct S {
    i64 N, in, out;
  };
  for (S sh : {S{1, 67, 45}, S{37, 67, 45}, S{64, 128, 96}}) {
    const i64 N = sh.N, in = sh.in, out = sh.out;
    auto x = self.rnd(N * in), W = self.rnd(out * in, 0.2), dy = self.rnd(N * out), y0 = self.rnd(N * out),
         dx0 = self.rnd(N * in);
    auto dW0 = self.rndf(out * in);
    for (Accumulate acc : {Accumulate::Overwrite, Accumulate::Add}) {
      std::vector<T> y = y0, dx = dx0;
      std::vector<float> dW = dW0;
      std::vector<char> ws(size_t(std::max(self.cpu->linear_forward_workspace_bytes(N, in, out),
                                           self.cpu->linear_backward_workspace_bytes(N, in, out))) + 16);
      self.cpu->linear_forward(y.data(), x.data(), W.data(), N, in, out, acc, ws.data());
      self.cpu->linear_backward(dx.data(), dW.data(), dy.data(), x.data(), W.data(), N, in, out, acc, ws.data());
      Dev<T> gx(x), gW(W), gdy(dy), gy(y0), gdx(dx0);
      Dev<float> gdW(dW0);
      self.gpu->linear_forward(gy.p, gx.p, gW.p, N, in, out, acc, nullptr);
      self.gpu->linear_backward(gdx.p, gdW.p, gdy.p, gx.p, gW.p, N, in, out, acc, nullptr);
      self.expect("linear y", gy.back(self.s()), y, gemm_kind<T>());
      self.expect("linear dx", gdx.back(self.s()), dx, gemm_kind<T>());
      self.expect("linear dW", gdW.back(self.s()), dW, Kind::Fp32);
    }
    // dx null: only dW.
    std::vector<float> dW = dW0;
    std::vector<char> ws(size_t(self.cpu->linear_backward_workspace_bytes(N, in, out)) + 16);
    self.cpu->linear_backward(nullptr, dW.data(), dy.data(), x.data(), W.data(), N, in, out, Accumulate::Overwrite,
                              ws.data());
    Dev<T> gx(x), gW(W), gdy(dy);
    Dev<float> gdW(dW0);
    self.gpu->linear_backward(nullptr, gdW.p, gdy.p, gx.p, gW.p, N, in, out, Accumulate::Overwrite, nullptr);
    self.expect("linear dW (no dx)", gdW.back(self.s()), dW, Kind::Fp32);
  }
}

TYPED_TEST(DenseGpu, RmsNorm) {
  using T = TypeParam;
  auto& self = *this;
  for (i64 N : {1, 37, 1300})  // 1300 rows: three row chunks of the dw sum (math::kRmsDwRows)
    for (i64 C : {67, 300}) {
      auto x = self.rnd(N * C), dy = self.rnd(N * C);
      auto w = self.rndf(C, 0.3, 1.0), dw0 = self.rndf(C);
      std::vector<T> y(N * C), dx(N * C);
      std::vector<float> rstd(N), dw = dw0;
      self.cpu->rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6);
      self.cpu->rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C, nullptr);
      Dev<T> gx(x), gdy(dy), gy(y), gdx(dx);
      Dev<float> gw(w), grstd(rstd), gdw(dw0);
      self.gpu->rmsnorm_forward(gy.p, grstd.p, gx.p, gw.p, N, C, 1e-6);
      self.expect("rmsnorm y", gy.back(self.s()), y, elem_kind<T>());
      self.expect("rmsnorm rstd", grstd.back(self.s()), rstd, Kind::Stat);
      Dev<float> crstd(rstd);  // backward from the CPU's rstd: only the backward kernels are compared
      Dev<double> gws(std::vector<double>(size_t(self.gpu->rmsnorm_backward_workspace_bytes(N, C) / 8 + 1)));
      self.gpu->rmsnorm_backward(gdx.p, gdw.p, gdy.p, gx.p, gw.p, crstd.p, N, C, gws.p);
      self.expect("rmsnorm dx", gdx.back(self.s()), dx, elem_kind<T>());
      self.expect("rmsnorm dw", gdw.back(self.s()), dw, Kind::Exact);  // the CPU's per-column row order, in double
    }
}

TYPED_TEST(DenseGpu, Rope) {
  using T = TypeParam;
  auto& self = *this;
  const i64 B = 2, L = 37, NHx = 3, D = 10, half = D / 2;
  std::vector<float> c(L * half), sn(L * half);
  self.cpu->rope_table(c.data(), sn.data(), L, D, 1e6);
  Dev<float> gc(c), gs(sn);
  self.gpu->rope_table(gc.p, gs.p, L, D, 1e6);
  self.expect("rope cos", gc.back(self.s()), c, Kind::Fp32);
  self.expect("rope sin", gs.back(self.s()), sn, Kind::Fp32);
  Dev<float> cc(c), cs(sn);  // apply with the CPU's table
  for (RopeDirection dir : {RopeDirection::Forward, RopeDirection::Inverse}) {
    auto x = self.rnd(B * L * NHx * D);
    Dev<T> gx(x);
    self.cpu->rope_apply(x.data(), c.data(), sn.data(), B, L, NHx, D, dir, nullptr);
    self.gpu->rope_apply(gx.p, cc.p, cs.p, B, L, NHx, D, dir, nullptr);
    self.expect(dir == RopeDirection::Forward ? "rope apply" : "rope inverse", gx.back(self.s()), x, elem_kind<T>());
  }
}

TYPED_TEST(DenseGpu, Swiglu) {
  using T = TypeParam;
  auto& self = *this;
  for (i64 n : {1, 4099}) {
    auto a = self.rnd(n, 3.0), b = self.rnd(n), dh = self.rnd(n);
    std::vector<T> h(n), da(n), db(n);
    self.cpu->swiglu_forward(h.data(), a.data(), b.data(), n);
    self.cpu->swiglu_backward(da.data(), db.data(), dh.data(), a.data(), b.data(), n);
    Dev<T> ga(a), gb(b), gdh(dh), gh(h), gda(da), gdb(db);
    self.gpu->swiglu_forward(gh.p, ga.p, gb.p, n);
    self.gpu->swiglu_backward(gda.p, gdb.p, gdh.p, ga.p, gb.p, n);
    self.expect("swiglu h", gh.back(self.s()), h, elem_kind<T>());
    self.expect("swiglu da", gda.back(self.s()), da, elem_kind<T>());
    self.expect("swiglu db", gdb.back(self.s()), db, elem_kind<T>());
  }
}

TYPED_TEST(DenseGpu, CrossEntropy) {
  using T = TypeParam;
  auto& self = *this;
  for (i64 N : {1, 37, 2500}) {  // 2500 > kCeMaxBlocks: blocks of the forward take several rows each
    const i64 V = 1001;
    auto logits = self.rnd(N * V, 3.0);
    std::vector<int32_t> tgt(N);
    for (i64 n = 0; n < N; ++n) tgt[n] = int32_t((n * 7919 + 13) % V);
    if (N > 1) tgt[N / 2] = kIgnoreTarget;
    for (i64 n = 1030; n < N; n += 97) tgt[n] = kIgnoreTarget;  // ignored rows in the blocks' second turn
    const double loss = self.cpu->cross_entropy_forward(logits.data(), tgt.data(), N, V);
    Dev<T> gl(logits);
    Dev<int32_t> gt(tgt);
    const double gloss = self.gpu->cross_entropy_forward(gl.p, gt.p, N, V);
    self.expect("ce loss", std::vector<double>{gloss}, std::vector<double>{loss}, Kind::Stat);
    const double scale = 1.0 / double(N);
    self.cpu->cross_entropy_backward_inplace(logits.data(), tgt.data(), N, V, scale);
    self.gpu->cross_entropy_backward_inplace(gl.p, gt.p, N, V, scale);
    self.expect("ce dlogits", gl.back(self.s()), logits, elem_kind<T>());
  }
}

TYPED_TEST(DenseGpu, Embedding) {
  using T = TypeParam;
  auto& self = *this;
  const i64 V = 50, H = 77, Tn = 300;
  auto W = self.rnd(V * H);
  std::vector<int32_t> ids(Tn);
  for (i64 t = 0; t < Tn; ++t) ids[t] = int32_t((t * t + 3 * t) % 17);  // repeats; V > 17 rows stay untouched
  auto dx = self.rnd(Tn * H);
  auto dW0 = self.rndf(V * H);
  std::vector<T> x(Tn * H);
  self.cpu->embedding_forward(x.data(), W.data(), ids.data(), Tn, H);
  Dev<T> gW(W), gx(x), gdx(dx);
  Dev<int32_t> gids(ids);
  self.gpu->embedding_forward(gx.p, gW.p, gids.p, Tn, H);
  self.expect("embedding x", gx.back(self.s()), x, Kind::Exact);
  for (int32_t pad : {-1, 4}) {
    std::vector<float> dW = dW0;
    self.cpu->embedding_backward(dW.data(), dx.data(), ids.data(), Tn, H, pad);
    Dev<float> gdW(dW0);
    self.gpu->embedding_backward(gdW.p, gdx.p, gids.p, Tn, H, pad);
    self.expect("embedding dW", gdW.back(self.s()), dW, Kind::Exact);  // token order, as the CPU
  }
}

TYPED_TEST(DenseGpu, AddCopyFill) {
  using T = TypeParam;
  auto& self = *this;
  const i64 n = 70001;
  auto a = self.rnd(n), b = self.rnd(n, 0.01);
  std::vector<T> y(n);
  self.cpu->add(y.data(), a.data(), b.data(), n);
  Dev<T> ga(a), gb(b), gy(y), gz(a);
  self.gpu->add(ga.p, ga.p, gb.p, n);  // y aliasing a
  self.expect("add", ga.back(self.s()), y, Kind::Exact);
  self.gpu->copy(gy.p, gb.p, n);
  self.expect("copy", gy.back(self.s()), b, Kind::Exact);
  self.gpu->fill_zero(gz.p, n);
  self.expect("fill_zero", gz.back(self.s()), std::vector<T>(n, T(0.f)), Kind::Exact);
}

// LoRA dropout: the same Philox draws on both tables (kernels/math/elementwise.h), bitwise, with implicit and explicit
// row keys, in place.
TYPED_TEST(DenseGpu, LoraDropout) {
  using T = TypeParam;
  auto& self = *this;
  const i64 N = 301, C = 67;
  auto x = self.rnd(N * C);
  std::vector<i64> keys(static_cast<size_t>(N));
  for (i64 n = 0; n < N; ++n) keys[size_t(n)] = i64((uint64_t(9 + n % 3) << 32) | uint64_t(5 * n));
  Dev<i64> gk(keys);
  for (const bool keyed : {false, true}) {
    const LoraDropout d{0.25, 77, 3, (2u << 20) ^ 1u, nullptr, 4};
    LoraDropout dc = d, dg = d;
    if (keyed) dc.keys = keys.data(), dg.keys = gk.p;
    std::vector<T> y(x.size());
    self.cpu->lora_dropout(y.data(), x.data(), N, C, dc);
    Dev<T> gx(x);
    self.gpu->lora_dropout(gx.p, gx.p, N, C, dg);
    self.expect(keyed ? "lora_dropout keyed" : "lora_dropout", gx.back(self.s()), y, Kind::Exact);
  }
}

TYPED_TEST(DenseGpu, Attention) {
  using T = TypeParam;
  auto& self = *this;
  struct S {
    i64 B, L, NH, NKV, D, window;
  };
  for (S sh : {S{1, 1, 2, 1, 16, 0}, S{2, 37, 4, 2, 16, 0}, S{2, 37, 4, 2, 40, 5}, S{1, 70, 3, 3, 64, 0},
               S{1, 45, 2, 1, 128, 16}}) {
    const i64 B = sh.B, L = sh.L, NH = sh.NH, NKV = sh.NKV, D = sh.D, win = sh.window;
    SCOPED_TRACE(testing::Message() << "B " << B << " L " << L << " NH " << NH << " NKV " << NKV << " D " << D
                                    << " window " << win);
    auto q = self.rnd(B * L * NH * D), k = self.rnd(B * L * NKV * D), v = self.rnd(B * L * NKV * D),
         dout = self.rnd(B * L * NH * D);
    std::vector<T> out(B * L * NH * D), dq(q.size()), dk(k.size()), dv(v.size());
    std::vector<float> lse(B * NH * L);
    std::vector<float> ws(size_t(self.cpu->attention_workspace_bytes(B, L, NH, NKV, D, win) / 4 + 16));
    self.cpu->attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D, win, nullptr,
                                ws.data());
    self.cpu->attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), q.data(),
                                 k.data(), v.data(), B, L, NH, NKV, D, win, nullptr, ws.data());
    Dev<T> gq(q), gk(k), gv(v), gdo(dout), gout(out), cout_(out), gdq(dq), gdk(dk), gdv(dv);
    Dev<float> glse(lse), clse(lse);
    Dev<char> gws(std::vector<char>(size_t(self.gpu->attention_workspace_bytes(B, L, NH, NKV, D, win)) + 16));
    self.gpu->attention_forward(gout.p, glse.p, gq.p, gk.p, gv.p, B, L, NH, NKV, D, win, nullptr, gws.p);
    self.expect("attention out", gout.back(self.s()), out, gemm_kind<T>());
    self.expect("attention lse", glse.back(self.s()), lse, Kind::Stat);
    // Backward from the CPU's out and lse: only the backward kernels are compared.
    self.gpu->attention_backward(gdq.p, gdk.p, gdv.p, gdo.p, cout_.p, clse.p, gq.p, gk.p, gv.p, B, L, NH, NKV, D, win, nullptr,
                                 gws.p);
    const auto dq1 = gdq.back(self.s()), dk1 = gdk.back(self.s()), dv1 = gdv.back(self.s());
    self.expect("attention dq", dq1, dq, gemm_kind<T>());
    self.expect("attention dk", dk1, dk, gemm_kind<T>());
    self.expect("attention dv", dv1, dv, gemm_kind<T>());
    // Determinism: a second backward gives the same bits.
    self.gpu->attention_backward(gdq.p, gdk.p, gdv.p, gdo.p, cout_.p, clse.p, gq.p, gk.p, gv.p, B, L, NH, NKV, D, win, nullptr,
                                 gws.p);
    self.expect("attention dq rerun", gdq.back(self.s()), dq1, Kind::Exact);
    self.expect("attention dk rerun", gdk.back(self.s()), dk1, Kind::Exact);
    self.expect("attention dv rerun", gdv.back(self.s()), dv1, Kind::Exact);
  }
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  if (moe::cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping the GPU dense-op tests\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
