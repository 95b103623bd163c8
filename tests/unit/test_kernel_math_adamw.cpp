// Owns the CPU checks of the shared optimizer math (kernels/math/adamw.h): AdamW per element against the DESIGN
// formula in double, the CPU passes (vector lanes, pieces, grad scale) against the shared element function bit for
// bit on odd shapes, and Σg²'s documented reduction order.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/math/adamw.h"
#include "optim/adamw.h"

namespace moe {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

TEST(KernelMathAdamW, StepConstantsFollowTheFormula) {
  const AdamWStep c = adamw_step_consts(3e-4, 0.9, 0.95, 1e-8, 0.1, 7);
  EXPECT_EQ(c.decay, float(1.0 - 3e-4 * 0.1));
  EXPECT_EQ(c.nodecay, 1.f);
  EXPECT_EQ(c.b1c, float(1.0 - 0.9));
  EXPECT_EQ(c.b2, 0.95f);
  EXPECT_EQ(c.b2c, float(1.0 - 0.95));
  EXPECT_FLOAT_EQ(c.step_size, float(3e-4 / (1.0 - std::pow(0.9, 7.0))));
  EXPECT_FLOAT_EQ(c.bias2_sqrt, float(std::sqrt(1.0 - std::pow(0.95, 7.0))));
  EXPECT_EQ(c.eps, 1e-8f);
}

// docs/DESIGN.md [C5.adamw] in double, several steps with and without decay: fp32 stays within 1e-5 relative.
TEST(KernelMathAdamW, ElementMatchesTheDesignFormulaInDouble) {
  const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  const std::vector<float> p0 = randn(64, 1), g0 = randn(64 * 5, 2, 0.3f);
  for (int decay = 0; decay < 2; ++decay)
    for (size_t i = 0; i < p0.size(); ++i) {
      float p = p0[i], m = 0, v = 0;
      double pd = p0[i], md = 0, vd = 0;
      for (long t = 1; t <= 5; ++t) {
        const float g = g0[size_t(t - 1) * 64 + i];
        const AdamWStep c = adamw_step_consts(lr, b1, b2, eps, wd, t);
        adamw_element(p, g, m, v, decay ? c.decay : c.nodecay, 1.f, c);
        if (decay) pd *= 1 - lr * wd;
        md = b1 * md + (1 - b1) * g;
        vd = b2 * vd + (1 - b2) * double(g) * g;
        pd -= lr / (1 - std::pow(b1, t)) * md / (std::sqrt(vd) / std::sqrt(1 - std::pow(b2, t)) + eps);
      }
      EXPECT_NEAR(p, pd, 1e-5 * std::fabs(pd) + 1e-7) << "element " << i << " decay " << decay;
      EXPECT_NEAR(m, md, 1e-5 * std::fabs(md) + 1e-8);
      EXPECT_NEAR(v, vd, 1e-5 * std::fabs(vd) + 1e-10);
    }
}

// The gradient scale multiplies g before anything else: scaling g by gs in the caller gives the same bits.
TEST(KernelMathAdamW, GradScaleIsAppliedToTheGradientRead) {
  const AdamWStep c = adamw_step_consts(1e-3, 0.9, 0.95, 1e-8, 0.0, 3);
  const std::vector<float> g = randn(100, 3);
  for (size_t i = 0; i < g.size(); ++i) {
    float p1 = 0.5f, m1 = 0.01f, v1 = 0.002f, p2 = p1, m2 = m1, v2 = v1;
    adamw_element(p1, g[i], m1, v1, c.nodecay, 0.37f, c);
    adamw_element(p2, g[i] * 0.37f, m2, v2, c.nodecay, 1.f, c);
    EXPECT_TRUE(same_bits(p1, p2) && same_bits(m1, m2) && same_bits(v1, v2)) << i;
  }
}

// The CPU pass (SSE/AVX2 lanes, scalar tails, work items split at 16384) gives adamw_element's bits on every
// element: the property the CUDA kernel's bitwise comparison rests on.
TEST(KernelMathAdamW, CpuPiecesPassEqualsTheElementFunctionBitwise) {
  const std::vector<i64> sizes = {1, 7, 8, 9, 17, 4095, 16384, 16385, 40001};
  const AdamWHyper hp{3e-3, 0.9, 0.95, 1e-8, 0.1};
  const float gs = 0.8125f;
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<AdamWPiece> pieces;
  uint32_t seed = 10;
  for (i64 n : sizes) {
    p.push_back(randn(size_t(n), seed++));
    g.push_back(randn(size_t(n), seed++, 0.1f));
    m.push_back(randn(size_t(n), seed++, 0.01f));
    v.push_back(randn(size_t(n), seed++, 0.001f));
    for (float& x : v.back()) x = x * x;
  }
  auto pe = p, me = m, ve = v;
  for (size_t k = 0; k < sizes.size(); ++k)
    pieces.push_back({p[k].data(), g[k].data(), m[k].data(), v[k].data(), sizes[k], k % 2 == 0});
  for (long t = 1; t <= 3; ++t) {
    adamw_update_pieces(pieces, hp, t, gs);
    const AdamWStep c = adamw_step_consts(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, t);
    for (size_t k = 0; k < sizes.size(); ++k)
      for (i64 i = 0; i < sizes[k]; ++i)
        adamw_element(pe[k][size_t(i)], g[k][size_t(i)], me[k][size_t(i)], ve[k][size_t(i)],
                      k % 2 == 0 ? c.decay : c.nodecay, gs, c);
  }
  for (size_t k = 0; k < sizes.size(); ++k)
    for (i64 i = 0; i < sizes[k]; ++i) {
      const size_t j = size_t(i);
      ASSERT_TRUE(same_bits(p[k][j], pe[k][j]) && same_bits(m[k][j], me[k][j]) && same_bits(v[k][j], ve[k][j]))
          << "piece " << k << " (n " << sizes[k] << ") element " << i << ": " << p[k][j] << " vs " << pe[k][j];
    }
  // adamw_update (one tensor, no scale) is the same pass.
  std::vector<float> p1 = randn(1001, 90), g1 = randn(1001, 91), m1(1001, 0.f), v1(1001, 0.f);
  auto p2 = p1, m2 = m1, v2 = v1;
  adamw_update(p1.data(), g1.data(), m1.data(), v1.data(), 1001, hp, 1);
  const AdamWStep c = adamw_step_consts(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, 1);
  for (size_t i = 0; i < 1001; ++i) {
    adamw_element(p2[i], g1[i], m2[i], v2[i], c.decay, 1.f, c);
    ASSERT_TRUE(same_bits(p1[i], p2[i]) && same_bits(m1[i], m2[i]) && same_bits(v1[i], v2[i])) << i;
  }
}

// Σg²: written out here in the documented order with plain double operations, and close to a long double sum.
TEST(KernelMathAdamW, GradSqSumFollowsTheDocumentedOrder) {
  for (i64 n : {i64(0), i64(1), i64(7), i64(4095), i64(4096), i64(4097), i64(3 * 4096 + 5), i64(50000)}) {
    const std::vector<float> g = randn(size_t(n), uint32_t(n) + 5, 2.f);
    double s = 0;
    long double exact = 0;
    for (i64 b = 0; b * 4096 < n; ++b) {
      double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (i64 i = b * 4096; i < std::min(n, (b + 1) * 4096); ++i) a[(i - b * 4096) % 8] += double(g[size_t(i)]) * g[size_t(i)];
      s += ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
    for (float x : g) exact += (long double)x * x;
    const double got = grad_sq_sum(g.data(), n);
    EXPECT_EQ(got, s) << "n " << n;
    EXPECT_NEAR(got, double(exact), 1e-12 * double(exact)) << "n " << n;
    double lanes[kSqLanes] = {1, 2, 3, 4, 5, 6, 7, 8};
    EXPECT_EQ(sq_lanes_combine(lanes), 36.0);
    EXPECT_EQ(sq_lane_add(1.0, 3.f), 10.0);
  }
}

TEST(KernelMathAdamW, ScaleElementIsOneRoundedProduct) {
  EXPECT_EQ(scale_element(3.f, 0.5f), 1.5f);
  const float x = 1.1f, c = 0.3f;
  EXPECT_TRUE(same_bits(scale_element(x, c), float(double(x) * double(c))));
}

}  // namespace
}  // namespace moe
