// Owns the CPU checks of the shared MoE math (kernels/math/router.h, kernels/math/moe.h) that the CUDA kernels run:
// each function against an independent formula (long-double sums, sorting, finite differences) on odd shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "core/rng.h"
#include "kernels/math/moe.h"
#include "kernels/math/router.h"
#include "kernels/ref/cross_entropy_ref.h"

using namespace moe;

namespace {

std::vector<double> randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = nd(g);
  return v;
}

long double lse_ld(const double* x, i64 n, double tau = 1.0) {
  long double mx = x[0] / tau;
  for (i64 i = 1; i < n; ++i) mx = std::max(mx, (long double)(x[i] / tau));
  long double s = 0;
  for (i64 i = 0; i < n; ++i) s += std::exp((long double)(x[i] / tau) - mx);
  return mx + std::log(s);
}

}  // namespace

TEST(KernelMathMoe, SoftmaxRowMatchesLongDoubleFormula) {
  for (const i64 E : {1, 3, 7, 61}) {
    for (const double tau : {1.0, 0.7, 2.5}) {
      const auto lg = randn(size_t(E), uint32_t(E * 10 + tau * 10), 3.0);
      std::vector<float> lgf(lg.begin(), lg.end()), p(static_cast<size_t>(E));
      router_softmax_row<float>(p.data(), lgf.data(), E, tau);
      std::vector<double> lgd(lgf.begin(), lgf.end());
      const long double z = lse_ld(lgd.data(), E, tau);
      double sum = 0;
      for (i64 e = 0; e < E; ++e) {
        const double want = double(std::exp((long double)(lgd[size_t(e)] / tau) - z));
        EXPECT_NEAR(p[size_t(e)], want, 1e-7 * want + 1e-12) << "E=" << E << " tau=" << tau << " e=" << e;
        sum += p[size_t(e)];
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);
    }
  }
}

TEST(KernelMathMoe, LseRowMatchesReferenceAndFormula) {
  for (const i64 E : {1, 5, 64, 129}) {
    const auto x = randn(size_t(E), uint32_t(E), 4.0);
    std::vector<float> xf(x.begin(), x.end());
    std::vector<double> xd(xf.begin(), xf.end());
    EXPECT_EQ(router_lse_row<float>(xf.data(), E), logsumexp_row<float>(xf.data(), E)) << E;
    EXPECT_NEAR(router_lse_row<float>(xf.data(), E), double(lse_ld(xd.data(), E)), 1e-12 * (1 + std::fabs(x[0])));
  }
}

// Top-k = the first K of the experts sorted by (p + bias) descending, ties to the lower index (a stable sort).
TEST(KernelMathMoe, TopkRowMatchesStableSortWithTiesAndBias) {
  std::mt19937 g(3);
  for (const i64 E : {1, 2, 7, 16, 33}) {
    for (i64 K = 1; K <= std::min<i64>(E, 6); ++K) {
      for (int with_bias = 0; with_bias < 2; ++with_bias) {
        // Values on a coarse grid so ties happen often.
        std::vector<float> p(static_cast<size_t>(E)), bias(static_cast<size_t>(E));
        for (auto& v : p) v = float(g() % 5) * 0.125f;
        for (auto& v : bias) v = float(int(g() % 3) - 1) * 0.125f;
        const float* b = with_bias ? bias.data() : nullptr;
        std::vector<i64> order(static_cast<size_t>(E));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](i64 x, i64 y) {
          return double(p[size_t(x)]) + (b ? double(b[x]) : 0.0) > double(p[size_t(y)]) + (b ? double(b[y]) : 0.0);
        });
        std::vector<int> idx(size_t(K), -7);
        std::vector<float> w(static_cast<size_t>(K));
        router_topk_row<float>(idx.data(), w.data(), p.data(), b, E, K);
        for (i64 k = 0; k < K; ++k) {
          EXPECT_EQ(idx[size_t(k)], int(order[size_t(k)])) << "E=" << E << " K=" << K << " k=" << k;
          EXPECT_EQ(w[size_t(k)], p[size_t(order[size_t(k)])]);  // the prob, never the biased score
        }
      }
    }
  }
}

TEST(KernelMathMoe, TopkRenormalizeSumsToOneKeepingRatios) {
  std::vector<float> w = {0.3f, 0.05f, 0.125f};
  const std::vector<float> w0 = w;
  router_topk_renormalize<float>(w.data(), 3);
  const double s = double(w0[0]) + w0[1] + w0[2];
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(w[size_t(k)], w0[size_t(k)] / s, 1e-7);
  EXPECT_NEAR(double(w[0]) + w[1] + w[2], 1.0, 1e-6);
}

// router_backward_row = the gradient of L(lg) = Σ_k dtw_k·w_k + Σ_e aux_e·p_e + z_scale·lse(lg)²/Tn with the
// selection held fixed, by central differences in double.
TEST(KernelMathMoe, BackwardRowMatchesFiniteDifferences) {
  const i64 E = 7, K = 3, Tn = 5;
  for (const TopkNorm norm : {TopkNorm::Renormalize, TopkNorm::Raw}) {
    for (const double tau : {1.0, 1.7}) {
      const auto lg = randn(size_t(E), 11, 1.5);
      const auto dtw = randn(size_t(K), 12);
      const auto aux = randn(size_t(E), 13, 0.1);
      const double z_scale = 0.3;
      std::vector<double> p(static_cast<size_t>(E)), w(static_cast<size_t>(K));
      std::vector<int> idx(static_cast<size_t>(K));
      router_softmax_row<double>(p.data(), lg.data(), E, tau);
      router_topk_row<double>(idx.data(), w.data(), p.data(), nullptr, E, K);
      if (norm == TopkNorm::Renormalize) router_topk_renormalize<double>(w.data(), K);
      auto loss = [&](const std::vector<double>& l) {
        std::vector<double> q(static_cast<size_t>(E));
        router_softmax_row<double>(q.data(), l.data(), E, tau);
        double S = 0;
        for (i64 k = 0; k < K; ++k) S += q[size_t(idx[size_t(k)])];
        double L = 0;
        for (i64 k = 0; k < K; ++k)
          L += dtw[size_t(k)] * q[size_t(idx[size_t(k)])] / (norm == TopkNorm::Renormalize ? S : 1.0);
        for (i64 e = 0; e < E; ++e) L += aux[size_t(e)] * q[size_t(e)];
        const double z = double(lse_ld(l.data(), E));
        return L + z_scale * z * z / double(Tn);
      };
      std::vector<double> dl(static_cast<size_t>(E));
      router_backward_row<double>(dl.data(), p.data(), lg.data(), idx.data(), dtw.data(), w.data(), aux.data(),
                                  z_scale, E, K, Tn, tau, norm);
      for (i64 e = 0; e < E; ++e) {
        const double h = 1e-6;
        auto lp = lg, lm = lg;
        lp[size_t(e)] += h;
        lm[size_t(e)] -= h;
        const double fd = (loss(lp) - loss(lm)) / (2 * h);
        EXPECT_NEAR(dl[size_t(e)], fd, 1e-7 + 1e-6 * std::fabs(fd)) << "e=" << e << " tau=" << tau;
      }
    }
  }
}

TEST(KernelMathMoe, JitterFactorIsUniformOnTheBand) {
  const double eps = 0.01;
  const Philox ph(42, RngPurpose::RouterJitter);
  double lo = 2, hi = 0, mean = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double u = ph.uniform(uint64_t(i), 3, 5);
    const double f = moe_math::jitter_factor(u, eps);
    EXPECT_NEAR(f, 1.0 - eps + 2.0 * eps * u, 1e-15);
    lo = std::min(lo, f);
    hi = std::max(hi, f);
    mean += f / n;
  }
  EXPECT_GE(lo, 1.0 - eps);
  EXPECT_LT(hi, 1.0 + eps);
  EXPECT_NEAR(mean, 1.0, 3e-4);
}

TEST(KernelMathMoe, PairKeyAndDropoutFactorFollowTheDocumentedDraw) {
  const uint32_t stream = rng_stream(3, 17);
  const i64 pair = 123457, I = 37;
  const i64 key = moe_math::pair_key(stream, pair);
  EXPECT_EQ(uint64_t(key) >> 32, stream);
  EXPECT_EQ(uint64_t(key) & 0xffffffffu, uint64_t(pair));
  const double p = 0.25;
  const float keep = float(1.0 / (1.0 - p));
  const Philox ph(99, RngPurpose::ExpertDropout);
  int zeros = 0;
  for (i64 i = 0; i < I; ++i) {
    const float m = moe_math::dropout_factor<float>(ph, key, i, I, 7, p, keep);
    const double u = Philox(99, RngPurpose::ExpertDropout).uniform(uint64_t(pair) * uint64_t(I) + uint64_t(i), 7, stream);
    EXPECT_EQ(m, u < p ? 0.f : keep) << i;
    zeros += m == 0.f;
  }
  // Over many rows the drop rate is p.
  int total = 0, dropped = 0;
  for (i64 r = 0; r < 400; ++r)
    for (i64 i = 0; i < I; ++i, ++total)
      dropped += moe_math::dropout_factor<float>(ph, moe_math::pair_key(stream, r), i, I, 7, p, keep) == 0.f;
  EXPECT_NEAR(double(dropped) / total, p, 0.02);
}

// combine / unpermute of one element: Σ over kept slots in slot order, against a double sum, with dropped slots.
TEST(KernelMathMoe, CombineAndUnpermuteElementsSumKeptSlots) {
  const i64 T = 3, K = 3, H = 5, R = 7;
  const auto yv = randn(size_t(R * H), 5);
  std::vector<bf16> y(yv.begin(), yv.end());
  const std::vector<i64> pair_row = {0, -1, 4, 6, 2, -1, -1, -1, -1};
  const std::vector<float> w = {0.5f, 0.25f, 0.25f, 0.6f, 0.4f, 0.f, 0.3f, 0.3f, 0.4f};
  for (i64 t = 0; t < T; ++t) {
    for (i64 h = 0; h < H; ++h) {
      double c = 0, u = 0;
      for (i64 k = 0; k < K; ++k) {
        const i64 r = pair_row[size_t(t * K + k)];
        if (r < 0) continue;
        c += double(w[size_t(t * K + k)]) * double(float(y[size_t(r * H + h)]));
        u += double(float(y[size_t(r * H + h)]));
      }
      const float got_c = moe_math::combine_elem<bf16>(y.data(), w.data() + t * K, pair_row.data() + t * K, K, H, h);
      const float got_u = moe_math::unpermute_elem<bf16>(y.data(), pair_row.data() + t * K, K, H, h);
      EXPECT_NEAR(got_c, c, 1e-6 * (1 + std::fabs(c)));
      EXPECT_NEAR(got_u, u, 1e-6 * (1 + std::fabs(u)));
      if (t == 2) {
        EXPECT_EQ(got_c, 0.f);  // every slot dropped
        EXPECT_EQ(got_u, 0.f);
      }
    }
  }
}

TEST(KernelMathMoe, ExpertSwigluAndItsBackward) {
  const auto a = randn(101, 21, 3.0), b = randn(101, 22, 2.0);
  for (size_t i = 0; i < a.size(); ++i) {
    const float af = float(a[i]), bf = float(b[i]);
    const double s = 1.0 / (1.0 + std::exp(-double(af)));
    EXPECT_NEAR(moe_math::expert_swiglu(af, bf, 1.f), double(af) * s * bf, 1e-6 * (1 + std::fabs(af * bf)));
    EXPECT_EQ(moe_math::expert_swiglu(af, bf, 0.f), 0.f);
    EXPECT_NEAR(moe_math::expert_swiglu(af, bf, 1.25f), 1.25 * double(af) * s * bf, 2e-6 * (1 + std::fabs(af * bf)));
    // Backward against d/da, d/db of silu(a)·b by central differences in double.
    float da, db;
    moe_math::expert_swiglu_backward(da, db, 1.f, af, bf);
    auto f = [](double x, double y) { return x / (1.0 + std::exp(-x)) * y; };
    const double h = 1e-5;
    const double fa = (f(af + h, bf) - f(af - h, bf)) / (2 * h), fb = (f(af, bf + h) - f(af, bf - h)) / (2 * h);
    EXPECT_NEAR(da, fa, 1e-5 * (1 + std::fabs(fa)));
    EXPECT_NEAR(db, fb, 1e-5 * (1 + std::fabs(fb)));
  }
}

TEST(KernelMathMoe, WarpOrderDotEqualsTheSumWithinReordering) {
  for (const i64 H : {1, 31, 33, 257, 4099}) {
    const auto x = randn(size_t(H), uint32_t(H)), y = randn(size_t(H), uint32_t(H + 1));
    long double ref = 0, mag = 0;
    for (i64 h = 0; h < H; ++h) {
      ref += (long double)float(x[size_t(h)]) * float(y[size_t(h)]);
      mag += std::fabs((long double)float(x[size_t(h)]) * float(y[size_t(h)]));
    }
    const float got = moe_math::warp_order_dot(
        [&](i64 h) { return rn::mul(float(x[size_t(h)]), float(y[size_t(h)])); }, H);
    EXPECT_NEAR(got, double(ref), 1e-6 * double(mag) + 1e-7) << H;
  }
}
