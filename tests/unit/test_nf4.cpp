// Owns the oracle-free properties of the NF4 codec: per-block error bound, nibble order, sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "peft/nf4.h"

using namespace moe;

namespace {
std::vector<float> randn(int64_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
}  // namespace

TEST(Nf4, RoundTripErrorWithinHalfMaxGapPerBlock) {
  const auto& c = nf4_code();
  float gap = 0.0f;
  for (int i = 0; i + 1 < 16; ++i) gap = std::max(gap, c[i + 1] - c[i]);
  for (auto dq : {Nf4DoubleQuant::off, Nf4DoubleQuant::on}) {
    const int64_t n = 64 * 100 + 37;
    const auto x = randn(n, 3);
    const Nf4Tensor q = nf4_quantize(x.data(), n, dq);
    std::vector<float> y(n);
    nf4_dequantize(q, y.data());
    const auto am = nf4_block_absmax(q);
    for (int64_t i = 0; i < n; ++i) {
      float true_am = 0.0f;
      for (int64_t j = i / 64 * 64; j < std::min(n, i / 64 * 64 + 64); ++j) true_am = std::max(true_am, std::fabs(x[j]));
      // quantization error of the code plus the error of the (double-quantized) absmax itself
      const float bound = true_am * gap / 2 * 1.0001f + std::fabs(am[i / 64] - true_am);
      ASSERT_LE(std::fabs(x[i] - y[i]), bound) << "element " << i;
    }
  }
}

TEST(Nf4, FirstElementInHighNibbleAndOddPadIsZeroCode) {
  // block absmax 1: −1 → code 0, 1 → code 15, 0 → code 7
  std::vector<float> x = {-1.0f, 1.0f, 0.0f};
  const Nf4Tensor q = nf4_quantize(x.data(), 3, Nf4DoubleQuant::off);
  ASSERT_EQ(q.codes.size(), 2u);
  EXPECT_EQ(q.codes[0], 0x0F);
  EXPECT_EQ(q.codes[1], 0x77);
}

TEST(Nf4, BytesPerParameterWithDoubleQuant) {
  const int64_t n = 4096 * 1024;
  const auto x = randn(n, 5);
  const Nf4Tensor on = nf4_quantize(x.data(), n, Nf4DoubleQuant::on);
  const Nf4Tensor off = nf4_quantize(x.data(), n, Nf4DoubleQuant::off);
  const double bpp = static_cast<double>(on.bytes()) / n;
  EXPECT_LE(bpp, 0.53);
  EXPECT_EQ(on.codes.size(), static_cast<size_t>(n / 2));
  EXPECT_EQ(on.qabsmax.size(), static_cast<size_t>(n / 64));
  EXPECT_EQ(on.absmax2.size(), static_cast<size_t>((n / 64 + 255) / 256));
  EXPECT_EQ(off.bytes(), n / 2 + n / 64 * 4);
  std::printf("NF4 bytes/parameter: double quant %.6f, single %.6f\n", bpp, static_cast<double>(off.bytes()) / n);
}
