// Owns the Bf16Kernels.* tests: RNE rounding against hand-derived bit patterns, and each bf16 kernel (oneDNN GEMM and
// linear layers, RMSNorm, RoPE, SwiGLU, cross-entropy) against a double-precision reference of the bf16 contract
// (docs/DESIGN.md "bf16", B2–B9) on bf16-representable inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/bf16.h"
#include "kernels/ref/cross_entropy_ref.h"
#include "kernels/ref/gemm_ref.h"
#include "kernels/ref/rmsnorm_ref.h"
#include "kernels/ref/rope_ref.h"
#include "kernels/ref/swiglu_ref.h"

namespace moe {
namespace {

using Vec = std::vector<double>;

float f_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<bf16> rnd_bf16(size_t n, std::mt19937_64& g, double sd = 1.0, double mean = 0.0) {
  std::normal_distribution<double> nd(mean, sd);
  std::vector<bf16> x(n);
  for (auto& e : x) e = bf16(float(nd(g)));
  return x;
}
Vec to_d(const std::vector<bf16>& x) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = double(float(x[i]));
  return y;
}

// Half a bf16 ulp at ref (ref's binade; normal range of bf16 = that of fp32).
double half_ulp(double ref) {
  const double a = std::max(std::abs(ref), 1.1754943508222875e-38);
  int e;
  std::frexp(a, &e);  // a = f · 2^e, f ∈ [0.5, 1): ulp = 2^(e−8)
  return std::ldexp(1.0, e - 9);
}

// One rounding: every |y − ref| ≤ half a bf16 ulp of ref + slack[i] (the fp32 arithmetic before the rounding).
// A truncating rounding, a double rounding through another format or an error of a bf16 ulp fails it.
::testing::AssertionResult one_rounding(const std::vector<bf16>& y, const Vec& ref, const Vec& slack) {
  int bad = 0;
  size_t first = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::abs(double(float(y[i])) - ref[i]);
    if (!(err <= half_ulp(ref[i]) + slack[i])) {
      if (bad++ == 0) first = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << ref.size() << " elements are more than one rounding off;"
                                       << " first [" << first << "] got " << float(y[first]) << " want "
                                       << ref[first] << " (half ulp " << half_ulp(ref[first]) << ")";
}
Vec rel_slack(const Vec& mag, double r) {
  Vec s(mag.size());
  for (size_t i = 0; i < mag.size(); ++i) s[i] = r * mag[i];
  return s;
}

// ---------------------------------------------------------------- rounding

// Expected bits derived by hand from the fp32 bit pattern: keep the top 16 bits, add one when the low 16 bits exceed
// 0x8000, or equal it and bit 16 is odd (ties to even); NaN stays NaN. (torch's .to(bfloat16) gives the same bits for
// every non-NaN case here.)
TEST(Bf16Kernels, RoundingBitPatterns) {
  struct Case {
    uint32_t in;
    uint16_t out;
    const char* what;
  };
  const Case cases[] = {
      {0x3F800000u, 0x3F80, "1.0 exact"},
      {0x3F808000u, 0x3F80, "1 + 2^-8: tie, 0x3F80 is even"},
      {0x3F818000u, 0x3F82, "1 + 3·2^-8: tie, 0x3F81 odd → up"},
      {0x3F808001u, 0x3F81, "just above the tie"},
      {0x3F807FFFu, 0x3F80, "just below the tie"},
      {0xBF818000u, 0xBF82, "negative tie rounds the magnitude to even"},
      {0x3FFF8000u, 0x4000, "tie carrying into the exponent (1.9921875 + 2^-8 → 2)"},
      {0x7F7F7FFFu, 0x7F7F, "below the tie at max finite bf16"},
      {0x7F7F8000u, 0x7F80, "tie at max finite bf16 (odd) → +inf"},
      {0x7F7FFFFFu, 0x7F80, "fp32 max finite overflows to +inf"},
      {0xFF7FFFFFu, 0xFF80, "−fp32 max → −inf"},
      {0x7F800000u, 0x7F80, "+inf"},
      {0xFF800000u, 0xFF80, "−inf"},
      {0x00000000u, 0x0000, "+0"},
      {0x80000000u, 0x8000, "−0"},
      {0x00008000u, 0x0000, "subnormal tie to even 0"},
      {0x00018000u, 0x0002, "subnormal tie, odd → up"},
      {0x00000001u, 0x0000, "smallest subnormal → 0"},
      {0x007FFFFFu, 0x0080, "largest subnormal → smallest normal"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(bf16(f_bits(c.in)).bits, c.out) << c.what << " (in 0x" << std::hex << c.in << ")";
    EXPECT_EQ(bf16_bits_from_float(f_bits(c.in)), c.out) << c.what;
  }
  // NaN stays NaN (exponent all ones, mantissa non-zero), also a signalling NaN whose payload lies only in the
  // dropped bits (plain rounding would make it ±inf). Which NaN is not part of the contract.
  for (const uint32_t nan : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0xFFC00000u}) {
    const uint16_t b = bf16(f_bits(nan)).bits;
    EXPECT_EQ(b & 0x7F80, 0x7F80) << std::hex << nan;
    EXPECT_NE(b & 0x007F, 0) << std::hex << nan;
  }
  // round_bf16 and the float conversion return the value of those bits.
  EXPECT_EQ(round_bf16(f_bits(0x3F818000u)), f_bits(0x3F820000u));
  EXPECT_EQ(float(bf16::from_bits(0x4049)), 3.140625f);
  EXPECT_TRUE(std::isnan(round_bf16(f_bits(0x7F800001u))));
}

// ---------------------------------------------------------------- GEMM (B3)

// C = alpha·op(A)·op(B) + beta·C in double, and Σ|terms| per element.
void gemm_ref_d(Vec& C, Vec& mag, const Vec& A, const Vec& B, i64 M, i64 N, i64 K, Trans ta, Trans tb, i64 lda,
                i64 ldb, i64 ldc, double alpha, double beta) {
  for (i64 i = 0; i < M; ++i)
    for (i64 j = 0; j < N; ++j) {
      double s = 0, m = 0;
      for (i64 k = 0; k < K; ++k) {
        const double a = ta == Trans::Yes ? A[static_cast<size_t>(k * lda + i)] : A[static_cast<size_t>(i * lda + k)];
        const double b = tb == Trans::Yes ? B[static_cast<size_t>(j * ldb + k)] : B[static_cast<size_t>(k * ldb + j)];
        s += a * b, m += std::abs(a * b);
      }
      double& c = C[static_cast<size_t>(i * ldc + j)];
      mag[static_cast<size_t>(i * ldc + j)] = std::abs(alpha) * m + std::abs(beta * c);
      c = alpha * s + beta * c;
    }
}

// fp32 accumulation of K products (each exact in fp32): error ≤ K·2^-24·Σ|terms| (first-order bound, with margin 2).
TEST(Bf16Kernels, GemmAllTransposesWithinFp32Accumulation) {
  std::mt19937_64 g(1);
  const i64 M = 37, N = 29, K = 301;
  for (const Trans ta : {Trans::No, Trans::Yes})
    for (const Trans tb : {Trans::No, Trans::Yes}) {
      // Leading dimensions wider than the matrices: strided views.
      const i64 lda = (ta == Trans::Yes ? M : K) + 3, ldb = (tb == Trans::Yes ? K : N) + 5, ldc = N + 2;
      const i64 rowsA = ta == Trans::Yes ? K : M, rowsB = tb == Trans::Yes ? N : K;
      auto A = rnd_bf16(static_cast<size_t>(rowsA * lda), g), B = rnd_bf16(static_cast<size_t>(rowsB * ldb), g);
      std::vector<float> C(static_cast<size_t>(M * ldc));
      std::normal_distribution<float> nd;
      for (auto& c : C) c = nd(g);
      const std::vector<float> C0 = C;
      const float alpha = 0.75f, beta = 0.5f;
      gemm_bf16_f32(C.data(), A.data(), B.data(), M, N, K, ta, tb, lda, ldb, ldc, alpha, beta);
      Vec Cd(C0.begin(), C0.end()), mag(Cd.size(), 0.0);
      gemm_ref_d(Cd, mag, to_d(A), to_d(B), M, N, K, ta, tb, lda, ldb, ldc, alpha, beta);
      double worst = 0;
      for (i64 i = 0; i < M; ++i)
        for (i64 j = 0; j < ldc; ++j) {
          const size_t x = static_cast<size_t>(i * ldc + j);
          if (j >= N) {
            EXPECT_EQ(C[x], C0[x]) << "padding column written";
            continue;
          }
          const double tol = 2.0 * double(K + 2) * std::ldexp(1.0, -24) * mag[x];
          worst = std::max(worst, std::abs(C[x] - Cd[x]) / tol);
        }
      EXPECT_LE(worst, 1.0) << "ta " << int(ta) << " tb " << int(tb);
      std::printf("[ gemm_bf16_f32 ta %d tb %d ] worst error / fp32 bound %.3f\n", int(ta), int(tb), worst);
    }
  // Empty K: C = beta·C.
  std::vector<float> C{1.f, 2.f};
  bf16 dummy(0.f);
  gemm_bf16_f32(C.data(), &dummy, &dummy, 1, 2, 0, Trans::No, Trans::No, 1, 2, 2, 1.f, 0.5f);
  EXPECT_EQ(C[0], 0.5f);
  EXPECT_EQ(C[1], 1.f);
}

// Linear layers: bf16 outputs rounded once from the fp32 accumulator (Add: round(acc + old)); fp32 logits; dW
// accumulated in fp32 on top of what it held.
TEST(Bf16Kernels, LinearForwardBackward) {
  std::mt19937_64 g(2);
  const i64 N = 45, in = 130, out = 70;
  auto x = rnd_bf16(static_cast<size_t>(N * in), g), W = rnd_bf16(static_cast<size_t>(out * in), g, 0.1), dy = rnd_bf16(static_cast<size_t>(N * out), g);
  const Vec xd = to_d(x), Wd = to_d(W), dyd = to_d(dy);
  std::vector<float> ws(static_cast<size_t>(std::max(N * out, N * in)));
  const double acc_err = 2.0 * double(in + out + N) * std::ldexp(1.0, -24);
  // y = x·Wᵀ
  Vec yref(static_cast<size_t>(N * out), 0.0), ymag(yref.size());
  gemm_ref_d(yref, ymag, xd, Wd, N, out, in, Trans::No, Trans::Yes, in, in, out, 1.0, 0.0);
  std::vector<bf16> y(yref.size());
  linear_forward_bf16(y.data(), x.data(), W.data(), N, in, out, Accumulate::Overwrite, ws.data());
  EXPECT_TRUE(one_rounding(y, yref, rel_slack(ymag, acc_err)));
  // fp32 logits
  std::vector<float> yf(yref.size());
  linear_forward_bf16_f32out(yf.data(), x.data(), W.data(), N, in, out);
  for (size_t i = 0; i < yf.size(); ++i) ASSERT_LE(std::abs(yf[i] - yref[i]), acc_err * ymag[i]) << i;
  // Add: y2 = round(x·Wᵀ + old)
  std::vector<bf16> y2 = rnd_bf16(yref.size(), g);
  Vec y2ref = to_d(y2), y2mag(yref.size());
  for (size_t i = 0; i < y2ref.size(); ++i) y2mag[i] = ymag[i] + std::abs(y2ref[i]), y2ref[i] += yref[i];
  linear_forward_bf16(y2.data(), x.data(), W.data(), N, in, out, Accumulate::Add, ws.data());
  EXPECT_TRUE(one_rounding(y2, y2ref, rel_slack(y2mag, acc_err)));
  // dx = dy·W, dW += dyᵀ·x
  Vec dxref(static_cast<size_t>(N * in), 0.0), dxmag(dxref.size()), dWref(static_cast<size_t>(out * in)), dWmag(dWref.size());
  std::vector<float> dW(dWref.size());
  std::normal_distribution<float> nd;
  for (size_t i = 0; i < dW.size(); ++i) dWref[i] = dW[i] = nd(g);
  gemm_ref_d(dxref, dxmag, dyd, Wd, N, in, out, Trans::No, Trans::No, out, in, in, 1.0, 0.0);
  gemm_ref_d(dWref, dWmag, dyd, xd, out, in, N, Trans::Yes, Trans::No, out, in, in, 1.0, 1.0);
  std::vector<bf16> dx(dxref.size(), bf16(9.f));
  linear_backward_bf16(dx.data(), dW.data(), dy.data(), x.data(), W.data(), N, in, out, Accumulate::Overwrite,
                       ws.data());
  EXPECT_TRUE(one_rounding(dx, dxref, rel_slack(dxmag, acc_err)));
  for (size_t i = 0; i < dW.size(); ++i) ASSERT_LE(std::abs(dW[i] - dWref[i]), acc_err * dWmag[i]) << i;
  // dx may be null (no input gradient); Add accumulates into dx.
  std::vector<float> dW2(dW.size(), 0.f);
  linear_backward_bf16(nullptr, dW2.data(), dy.data(), x.data(), W.data(), N, in, out, Accumulate::Overwrite,
                       ws.data());
  std::vector<bf16> dx2 = rnd_bf16(dxref.size(), g);
  Vec dx2ref = to_d(dx2), dx2mag(dxref.size());
  for (size_t i = 0; i < dx2ref.size(); ++i) dx2mag[i] = dxmag[i] + std::abs(dx2ref[i]), dx2ref[i] += dxref[i];
  linear_backward_bf16(dx2.data(), dW2.data(), dy.data(), x.data(), W.data(), N, in, out, Accumulate::Add,
                       ws.data());
  EXPECT_TRUE(one_rounding(dx2, dx2ref, rel_slack(dx2mag, acc_err)));
}

// ---------------------------------------------------------------- RMSNorm (B4)

TEST(Bf16Kernels, RmsNorm) {
  std::mt19937_64 g(3);
  const i64 N = 33, C = 200;
  const double eps = 1e-5;
  auto x = rnd_bf16(static_cast<size_t>(N * C), g, 2.0), w = rnd_bf16(static_cast<size_t>(C), g, 0.2, 1.0), dy = rnd_bf16(static_cast<size_t>(N * C), g);
  const Vec xd = to_d(x), wd = to_d(w), dyd = to_d(dy);
  std::vector<bf16> y(xd.size()), dx(xd.size());
  std::vector<float> rstd(static_cast<size_t>(N)), dw(static_cast<size_t>(C), 0.25f);
  const std::vector<float> wf(w.begin(), w.end());  // the gain is fp32 (DESIGN §8)
  rmsnorm_forward_ref<bf16>(y.data(), rstd.data(), x.data(), wf.data(), N, C, eps);
  rmsnorm_backward_ref<bf16>(dx.data(), dw.data(), dy.data(), x.data(), wf.data(), rstd.data(), N, C);
  Vec yref(xd.size()), ymag(xd.size()), dxref(xd.size()), dxmag(xd.size()), dwref(static_cast<size_t>(C), 0.25), dwmag(static_cast<size_t>(C));
  for (i64 n = 0; n < N; ++n) {
    double ss = 0;
    for (i64 c = 0; c < C; ++c) ss += xd[static_cast<size_t>(n * C + c)] * xd[static_cast<size_t>(n * C + c)];
    const double r = 1.0 / std::sqrt(ss / double(C) + eps);
    EXPECT_NEAR(rstd[static_cast<size_t>(n)], r, 1e-6 * r) << "rstd row " << n;
    double dot = 0, dotm = 0;
    for (i64 c = 0; c < C; ++c) {
      const size_t i = static_cast<size_t>(n * C + c);
      yref[i] = wd[static_cast<size_t>(c)] * xd[i] * r;
      ymag[i] = std::abs(yref[i]);
      dot += dyd[i] * wd[static_cast<size_t>(c)] * xd[i] * r, dotm += std::abs(dyd[i] * wd[static_cast<size_t>(c)] * xd[i] * r);
      dwref[static_cast<size_t>(c)] += dyd[i] * xd[i] * r;
      dwmag[static_cast<size_t>(c)] += std::abs(dyd[i] * xd[i] * r);
    }
    for (i64 c = 0; c < C; ++c) {
      const size_t i = static_cast<size_t>(n * C + c);
      dxref[i] = r * (dyd[i] * wd[static_cast<size_t>(c)] - xd[i] * r * dot / double(C));
      dxmag[i] = r * (std::abs(dyd[i] * wd[static_cast<size_t>(c)]) + std::abs(xd[i] * r) * dotm / double(C));
    }
  }
  EXPECT_TRUE(one_rounding(y, yref, rel_slack(ymag, 1e-6))) << "y";   // fp32 rstd and two fp32 products
  EXPECT_TRUE(one_rounding(dx, dxref, rel_slack(dxmag, 1e-6))) << "dx";  // double, then through its fp32 value
  for (i64 c = 0; c < C; ++c) EXPECT_NEAR(dw[static_cast<size_t>(c)], dwref[static_cast<size_t>(c)], 1e-6 * dwmag[static_cast<size_t>(c)] + 1e-7) << c;
}

// ---------------------------------------------------------------- RoPE (B5)

TEST(Bf16Kernels, Rope) {
  std::mt19937_64 g(4);
  const i64 B = 2, L = 19, NH = 3, D = 16, half = D / 2;
  // The bf16 table is the fp32 table, bit for bit.
  std::vector<float> cs(static_cast<size_t>(L * half)), sn(cs.size()), cs32(cs.size()), sn32(cs.size());
  rope_table_ref<bf16>(cs.data(), sn.data(), L, D, 1e4);
  rope_table_ref<float>(cs32.data(), sn32.data(), L, D, 1e4);
  EXPECT_EQ(0, std::memcmp(cs.data(), cs32.data(), cs.size() * 4));
  EXPECT_EQ(0, std::memcmp(sn.data(), sn32.data(), sn.size() * 4));
  auto x = rnd_bf16(static_cast<size_t>(B * L * NH * D), g, 3.0);
  const Vec xd = to_d(x);
  for (const RopeDirection dir : {RopeDirection::Forward, RopeDirection::Inverse}) {
    std::vector<bf16> y = x;
    rope_apply_ref<bf16>(y.data(), cs.data(), sn.data(), B, L, NH, D, dir);
    const double sg = dir == RopeDirection::Forward ? 1.0 : -1.0;
    Vec ref(xd.size()), mag(xd.size());
    for (i64 row = 0; row < B * L; ++row)
      for (i64 h = 0; h < NH; ++h)
        for (i64 i = 0; i < half; ++i) {
          const size_t a = static_cast<size_t>(row * NH * D + h * D + i), b = a + static_cast<size_t>(half), t = static_cast<size_t>((row % L) * half + i);
          const double c = cs[t], s = sg * sn[t];
          ref[a] = xd[a] * c - xd[b] * s, mag[a] = std::abs(xd[a] * c) + std::abs(xd[b] * s);
          ref[b] = xd[b] * c + xd[a] * s, mag[b] = mag[a];
        }
    EXPECT_TRUE(one_rounding(y, ref, rel_slack(mag, 2e-7))) << "direction " << int(dir);
  }
}

// ---------------------------------------------------------------- SwiGLU (B8)

TEST(Bf16Kernels, Swiglu) {
  std::mt19937_64 g(5);
  const i64 N = 1000 + 13;  // several 256-element spans and a tail
  auto a = rnd_bf16(static_cast<size_t>(N), g, 3.0), b = rnd_bf16(static_cast<size_t>(N), g), dh = rnd_bf16(static_cast<size_t>(N), g);
  const Vec ad = to_d(a), bd = to_d(b), dhd = to_d(dh);
  std::vector<bf16> h(static_cast<size_t>(N)), da(static_cast<size_t>(N)), db(static_cast<size_t>(N));
  swiglu_forward_ref<bf16>(h.data(), a.data(), b.data(), N);
  swiglu_backward_ref<bf16>(da.data(), db.data(), dh.data(), a.data(), b.data(), N);
  Vec href(static_cast<size_t>(N)), hs(static_cast<size_t>(N)), daref(static_cast<size_t>(N)), das(static_cast<size_t>(N)), dbref(static_cast<size_t>(N)), dbs(static_cast<size_t>(N));
  for (i64 n = 0; n < N; ++n) {
    const size_t i = static_cast<size_t>(n);
    const double s = 1.0 / (1.0 + std::exp(-ad[i])), silu = ad[i] * s;
    href[i] = silu * bd[i], hs[i] = 1e-6 * std::abs(href[i]);
    dbref[i] = dhd[i] * silu, dbs[i] = 1e-6 * std::abs(dbref[i]);
    daref[i] = dhd[i] * bd[i] * (s + ad[i] * s * (1 - s));
    das[i] = 1e-6 * std::abs(dhd[i] * bd[i]) * (s + std::abs(ad[i]) * s * (1 - s));  // s + a·s·(1−s) may cancel
  }
  EXPECT_TRUE(one_rounding(h, href, hs)) << "h";
  EXPECT_TRUE(one_rounding(da, daref, das)) << "da";
  EXPECT_TRUE(one_rounding(db, dbref, dbs)) << "db";
}

// ---------------------------------------------------------------- cross-entropy (B9)

TEST(Bf16Kernels, CrossEntropyOnBf16Logits) {
  std::mt19937_64 g(6);
  const i64 N = 7, V = 301;
  std::vector<bf16> logits(static_cast<size_t>(N * V));
  std::normal_distribution<float> nd(0.f, 3.f);
  for (auto& l : logits) l = bf16(nd(g));
  std::vector<int32_t> tgt{5, 0, 300, kIgnoreTarget, 17, 17, 299};
  const double scale = 1.0 / 6;
  // Forward reads the bf16 logits widened (fp32/double arithmetic); ignored rows add nothing.
  const double total = cross_entropy_forward_ref<bf16>(nullptr, logits.data(), tgt.data(), N, V);
  double want = 0;
  Vec ref(logits.size(), 0.0), slack(logits.size(), 0.0);
  for (i64 n = 0; n < N; ++n) {
    if (tgt[static_cast<size_t>(n)] == kIgnoreTarget) continue;
    double mx = -1e300, s = 0;
    for (i64 v = 0; v < V; ++v) mx = std::max(mx, double(logits[static_cast<size_t>(n * V + v)]));
    for (i64 v = 0; v < V; ++v) s += std::exp(double(logits[static_cast<size_t>(n * V + v)]) - mx);
    want += mx + std::log(s) - double(logits[static_cast<size_t>(n * V + tgt[static_cast<size_t>(n)])]);
    for (i64 v = 0; v < V; ++v) {
      const size_t i = static_cast<size_t>(n * V + v);
      const double p = std::exp(double(logits[i]) - mx) / s;
      ref[i] = scale * (p - (v == tgt[static_cast<size_t>(n)] ? 1.0 : 0.0));
      slack[i] = 1e-6 * scale;  // fp32 rounding of scale·p and of scale before the target's subtraction
    }
  }
  EXPECT_NEAR(total, want, 1e-12 * std::abs(want));
  // Backward in place on the bf16 logits: each dlogit rounded once.
  std::vector<bf16> dl = logits;
  cross_entropy_backward_inplace_ref<bf16>(dl.data(), tgt.data(), N, V, scale);
  EXPECT_TRUE(one_rounding(dl, ref, slack));
  for (i64 v = 0; v < V; ++v) EXPECT_EQ(dl[static_cast<size_t>(3 * V + v)].bits, 0) << "ignored row";
  // Out of place gives the same bits.
  std::vector<bf16> dl2(logits.size(), bf16(9.f));
  cross_entropy_backward_ref<bf16>(dl2.data(), logits.data(), tgt.data(), N, V, scale);
  EXPECT_EQ(0, std::memcmp(dl.data(), dl2.data(), dl.size() * 2));
  // T = float: the out-of-place backward is the in-place one, bit for bit.
  std::vector<float> lf(logits.begin(), logits.end());
  std::vector<float> a(lf.size()), b = lf;
  cross_entropy_backward_ref<float>(a.data(), lf.data(), tgt.data(), N, V, scale);
  cross_entropy_backward_inplace_ref<float>(b.data(), tgt.data(), N, V, scale);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
}

}  // namespace
}  // namespace moe
