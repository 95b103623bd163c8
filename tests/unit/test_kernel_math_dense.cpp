// Owns the KernelMathDense.* tests: the shared per-element/per-row arithmetic of the dense kernels (kernels/math/*.h,
// run by the CPU kernels and the CUDA kernels alike) against independent formulas (long double, central differences,
// brute-force masks) on odd shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/bf16.h"
#include "kernels/math/attention.h"
#include "kernels/math/cross_entropy.h"
#include "kernels/math/elementwise.h"
#include "kernels/math/rmsnorm.h"
#include "kernels/math/rope.h"
#include "kernels/math/swiglu.h"

namespace moe {
namespace {

using LD = long double;

std::vector<double> randn(size_t n, std::mt19937_64& g, double sd = 1.0) {
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<double> v(n);
  for (auto& e : v) e = nd(g);
  return v;
}

// Rows of odd width: y and dx assembled from the shared functions against the RMSNorm formula and the central
// difference of Σ dy·y; dw against the same difference with respect to w.
TEST(KernelMathDense, RmsNormAgainstFormulaAndDifferences) {
  std::mt19937_64 g(11);
  const double eps = 1e-5;
  for (int C : {1, 3, 37, 65}) {
    auto x = randn(C, g), w = randn(C, g), dy = randn(C, g);
    auto y_of = [&](const std::vector<double>& xv, const std::vector<double>& wv) {
      LD ss = 0;
      for (int c = 0; c < C; ++c) ss += LD(xv[c]) * xv[c];
      const LD r = 1.0L / std::sqrt(ss / C + eps);
      std::vector<LD> y(C);
      for (int c = 0; c < C; ++c) y[c] = LD(wv[c]) * xv[c] * r;
      return y;
    };
    auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv) {
      const auto y = y_of(xv, wv);
      LD s = 0;
      for (int c = 0; c < C; ++c) s += y[c] * dy[c];
      return s;
    };
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += x[c] * x[c];
    const double r = math::rmsnorm_rstd<double>(ss, C, eps);
    const auto yref = y_of(x, w);
    double dot = 0;
    for (int c = 0; c < C; ++c) {
      EXPECT_NEAR(math::rmsnorm_y<double>(x[c], w[c], r), double(yref[c]), 1e-12 * (1 + std::fabs(double(yref[c]))));
      dot += math::rmsnorm_dot_term(dy[c], w[c], x[c], r);
    }
    const double m = dot / C, h = 1e-6;
    for (int c = 0; c < C; ++c) {
      auto xp = x, xm = x, wp = w, wm = w;
      xp[c] += h, xm[c] -= h, wp[c] += h, wm[c] -= h;
      const double gx = double((loss(xp, w) - loss(xm, w)) / (2 * h));
      const double gw = double((loss(x, wp) - loss(x, wm)) / (2 * h));
      EXPECT_NEAR(math::rmsnorm_dx(dy[c], w[c], x[c], r, m), gx, 1e-6 * (1 + std::fabs(gx))) << "C " << C << " c " << c;
      EXPECT_NEAR(math::rmsnorm_dw_term(dy[c], x[c], r), gw, 1e-6 * (1 + std::fabs(gw))) << "C " << C << " c " << c;
    }
    // fp32 rstd is the double one rounded.
    EXPECT_EQ(math::rmsnorm_rstd<float>(ss, C, eps), float(r));
  }
}

// Angles against pos · theta^(−2i/D) in long double; rotation keeps the norm; Inverse undoes Forward.
TEST(KernelMathDense, RopeAngleAndRotation) {
  std::mt19937_64 g(12);
  for (long D : {2L, 6L, 10L, 128L})
    for (long pos : {0L, 1L, 7L, 513L})
      for (long i = 0; i < D / 2; ++i) {
        const LD want = LD(pos) * std::pow(LD(10000.0), -LD(2 * i) / LD(D));
        const float got = math::rope_angle(pos, i, D, 10000.0);
        EXPECT_NEAR(double(got), double(want), 4e-7 * (1 + double(want))) << "D " << D << " pos " << pos << " i " << i;
      }
  auto v = randn(64, g);
  for (int k = 0; k < 32; ++k) {
    const double ang = v[k] * 3, c = std::cos(ang), s = std::sin(ang), x1 = v[k + 32], x2 = v[(k + 7) % 64];
    double o1, o2, b1, b2;
    math::rope_rotate<double>(x1, x2, c, s, o1, o2);
    EXPECT_NEAR(o1, x1 * std::cos(ang) - x2 * std::sin(ang), 1e-14);
    EXPECT_NEAR(o1 * o1 + o2 * o2, x1 * x1 + x2 * x2, 1e-12);
    math::rope_rotate<double>(o1, o2, c, -s, b1, b2);
    EXPECT_NEAR(b1, x1, 1e-13);
    EXPECT_NEAR(b2, x2, 1e-13);
  }
}

// h = a·sigmoid(a)·b; da, db against central differences of h.
TEST(KernelMathDense, SwigluAgainstDifferences) {
  std::mt19937_64 g(13);
  const auto a = randn(31, g, 3.0), b = randn(31, g), dh = randn(31, g);
  auto hf = [](double av, double bv) { return av / (1 + std::exp(-av)) * bv; };
  for (int n = 0; n < 31; ++n) {
    const double s = math::sigmoid_from_exp_neg<double>(std::exp(-a[n]));
    EXPECT_NEAR(math::swiglu_h<double>(a[n], b[n], s), hf(a[n], b[n]), 1e-13 * (1 + std::fabs(hf(a[n], b[n]))));
    const double h = 1e-6;
    const double ga = dh[n] * (hf(a[n] + h, b[n]) - hf(a[n] - h, b[n])) / (2 * h);
    const double gb = dh[n] * (hf(a[n], b[n] + h) - hf(a[n], b[n] - h)) / (2 * h);
    EXPECT_NEAR(math::swiglu_da<double>(dh[n], a[n], b[n], s), ga, 1e-7 * (1 + std::fabs(ga)));
    EXPECT_NEAR(math::swiglu_db<double>(dh[n], a[n], s), gb, 1e-7 * (1 + std::fabs(gb)));
  }
  // float: the same formulas in fp32.
  const float af = 0.75f, sf = math::sigmoid_from_exp_neg<float>(std::exp(-af));
  EXPECT_NEAR(math::swiglu_h<float>(af, 2.f, sf), hf(0.75, 2.0), 1e-6);
}

// Row loss = −log softmax(x)[target]; dlogits = scale · (softmax − onehot), summing to 0 over the row.
TEST(KernelMathDense, CrossEntropyRowAndGradient) {
  std::mt19937_64 g(14);
  for (int V : {1, 2, 33, 101}) {
    const auto x = randn(V, g, 4.0);
    const int32_t tgt = int32_t(V / 3);
    double mx = x[0];
    for (double e : x) mx = e > mx ? e : mx;
    double sum = 0;
    for (double e : x) sum += std::exp(e - mx);
    LD z = 0;
    for (double e : x) z += std::exp(LD(e));
    const LD want = -std::log(std::exp(LD(x[tgt])) / z);
    EXPECT_NEAR(math::ce_row_loss(mx, sum, x[tgt]), double(want), 1e-12 * (1 + std::fabs(double(want))));
    const double scale = 0.37, k = scale / sum;
    double gsum = 0;
    for (int v = 0; v < V; ++v) {
      const double d = math::ce_dlogit<double>(k * std::exp(x[v] - mx), scale, v, tgt);
      const double p = double(std::exp(LD(x[v])) / z);
      EXPECT_NEAR(d, scale * (p - (v == tgt ? 1.0 : 0.0)), 1e-13);
      gsum += d;
    }
    EXPECT_NEAR(gsum, 0.0, 1e-13);
    // Ignored-target convention is the caller's; a target never equal to v leaves kex unchanged.
    EXPECT_EQ(math::ce_dlogit<float>(0.25, scale, 3, -100), 0.25f);
  }
}

// The mask helpers against the brute-force definition (j ≤ i, i − j < window when window > 0) on odd lengths.
TEST(KernelMathDense, AttentionMaskBruteForce) {
  for (long L : {1L, 2L, 5L, 37L})
    for (long window : {0L, 1L, 3L, 36L, 64L})
      for (long i = 0; i < L; ++i) {
        long first = -1;
        for (long j = 0; j < L; ++j) {
          const bool want = j <= i && (window == 0 || i - j < window);
          EXPECT_EQ(math::attn_visible(i, j, window), want) << "L " << L << " w " << window << " i " << i << " j " << j;
          if (want && first < 0) first = j;
        }
        EXPECT_EQ(math::attn_first_key(i, window), first);
        // query_end(j = i): one past the last query that sees key i.
        long last = -1;
        for (long q = 0; q < L; ++q)
          if (q >= i && (window == 0 || q - i < window)) last = q;
        EXPECT_EQ(math::attn_query_end(i, L, window), last + 1) << "L " << L << " w " << window << " j " << i;
      }
}

// Online softmax statistics (added one by one, merged in a tree) give log Σ exp(s); merge is bitwise commutative;
// dscore is P (dP − D) scale.
TEST(KernelMathDense, AttentionOnlineSoftmaxAndDscore) {
  std::mt19937_64 g(15);
  for (int n : {1, 3, 32, 77}) {
    const auto s = randn(n, g, 5.0);
    LD z = 0;
    for (double e : s) z += std::exp(LD(float(e)));
    // 4 partial statistics over interleaved scores, merged pairwise.
    float m[4], l[4];
    for (int p = 0; p < 4; ++p) m[p] = -INFINITY, l[p] = 0.f;
    for (int j = 0; j < n; ++j) math::attn_online_add(m[j % 4], l[j % 4], float(s[j]));
    float ma = m[0], la = l[0], mb = m[2], lb = l[2], mc = m[1], lc = l[1];
    math::attn_online_merge(ma, la, m[1], l[1]);
    math::attn_online_merge(mb, lb, m[3], l[3]);
    math::attn_online_merge(mc, lc, m[0], l[0]);  // the other order of the first pair
    EXPECT_EQ(mc, ma);
    EXPECT_EQ(lc, la);
    math::attn_online_merge(ma, la, mb, lb);
    EXPECT_NEAR(double(math::attn_lse(ma, la)), double(std::log(z)), 2e-6 * (1 + std::fabs(double(std::log(z)))));
  }
  float m = -INFINITY, l = 0.f;
  math::attn_online_merge(m, l, -INFINITY, 0.f);  // two empty statistics stay empty
  EXPECT_EQ(l, 0.f);
  EXPECT_FLOAT_EQ(math::attn_dscore(0.25f, 2.f, 0.5f, 0.125f), 0.25f * 1.5f * 0.125f);
}

// bf16 add rounds the exact fp32 sum once; the embedding gradient adds the widened value.
TEST(KernelMathDense, ElementwiseRounding) {
  const bf16 a(1.0f), b(float_from_bf16_bits(0x3b80));  // 1 + 2^-8: a tie, rounds to even (1.0)
  EXPECT_EQ(math::add_round<bf16>(a, b).bits, bf16(1.0f).bits);
  const bf16 c(float_from_bf16_bits(0x3bc0));  // 1 + 1.5·2^-8 rounds up to 1 + 2^-7
  EXPECT_EQ(math::add_round<bf16>(a, c).bits, bf16(1.0f + 0.0078125f).bits);
  EXPECT_EQ(math::add_round<float>(1.f, 2.f), 3.f);
  EXPECT_EQ(math::embed_grad_add<bf16>(0.5f, bf16(0.25f)), 0.75f);
}

}  // namespace
}  // namespace moe
