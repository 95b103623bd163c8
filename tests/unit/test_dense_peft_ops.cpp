// Owns the DensePeftOps.* tests: the dense ops LoRA/QLoRA adds or relies on — linear_backward with a frozen weight (dW null), scale, lora_dropout — on the CPU tables and through the guarded (device-style) wrapper.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "core/bf16.h"
#include "guarded_backend.h"

namespace moe {
namespace {

template <typename T>
std::vector<T> random_vec(i64 n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = T(u(rng));
  return v;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// dW null: dx is bitwise the dx of the call with a dW (both Accumulate modes), x is never read (null here), and
// nothing else is written; dx and dW both null is a no-op.
template <typename T>
void check_null_dw() {
  using A = acc_t<T>;
  auto be = make_cpu_backend<T>();
  DenseOps<T>& d = *be->dense;
  const i64 N = 37, in = 24, out = 19;
  const auto x = random_vec<T>(N * in, 1), W = random_vec<T>(out * in, 2), dy = random_vec<T>(N * out, 3);
  const auto dx0 = random_vec<T>(N * in, 4);
  const auto W_in = W, dy_in = dy;
  std::vector<char> ws(size_t(d.linear_backward_workspace_bytes(N, in, out)));
  for (Accumulate acc : {Accumulate::Overwrite, Accumulate::Add}) {
    std::vector<T> dx_ref = dx0, dx = dx0;
    std::vector<A> dW(size_t(out * in), A(0));
    d.linear_backward(dx_ref.data(), dW.data(), dy.data(), x.data(), W.data(), N, in, out, acc, ws.data());
    d.linear_backward(dx.data(), nullptr, dy.data(), nullptr, W.data(), N, in, out, acc, ws.data());
    EXPECT_TRUE(same_bits(dx, dx_ref)) << "accumulate " << int(acc);
    EXPECT_FALSE(same_bits(dx, dx0));  // the op did run
  }
  d.linear_backward(nullptr, nullptr, dy.data(), nullptr, W.data(), N, in, out, Accumulate::Add, ws.data());
  EXPECT_TRUE(same_bits(W, W_in));
  EXPECT_TRUE(same_bits(dy, dy_in));
}

TEST(DensePeftOps, NullDwSkipsWeightGradientFloat) { check_null_dw<float>(); }
TEST(DensePeftOps, NullDwSkipsWeightGradientDouble) { check_null_dw<double>(); }
TEST(DensePeftOps, NullDwSkipsWeightGradientBf16) { check_null_dw<bf16>(); }

// The guarded wrapper forwards a null dW (and a null x) without tripping its pointer check.
TEST(DensePeftOps, NullDwThroughGuardedBackend) {
  auto be = test::make_guarded_backend<bf16>();
  MemOps& m = *be->mem;
  const i64 N = 5, in = 8, out = 6;
  const auto W = random_vec<bf16>(out * in, 7), dy = random_vec<bf16>(N * out, 8);
  auto* dW_d = static_cast<bf16*>(m.alloc(i64(W.size() * 2), "W"));
  auto* dy_d = static_cast<bf16*>(m.alloc(i64(dy.size() * 2), "dy"));
  auto* dx_d = static_cast<bf16*>(m.alloc(N * in * 2, "dx"));
  const i64 wsb = be->dense->linear_backward_workspace_bytes(N, in, out);
  void* ws = m.alloc(wsb, "ws");
  m.to_backend(dW_d, W.data(), i64(W.size() * 2));
  m.to_backend(dy_d, dy.data(), i64(dy.size() * 2));
  be->dense->linear_backward(dx_d, nullptr, dy_d, nullptr, dW_d, N, in, out, Accumulate::Overwrite, ws);
  std::vector<bf16> dx(size_t(N * in)), ref(size_t(N * in));
  m.to_host(dx.data(), dx_d, N * in * 2);
  auto cpu = make_cpu_backend<bf16>();
  std::vector<char> cws(static_cast<size_t>(wsb));
  cpu->dense->linear_backward(ref.data(), nullptr, dy.data(), nullptr, W.data(), N, in, out, Accumulate::Overwrite,
                              cws.data());
  EXPECT_TRUE(same_bits(dx, ref));
  for (void* p : {static_cast<void*>(dW_d), static_cast<void*>(dy_d), static_cast<void*>(dx_d), ws}) m.free(p);
}

// y = s·x: fp32 for float (s rounded to float first), double for double, fp32 product rounded once for bf16;
// in place works. Expected values computed here by hand from the definition.
TEST(DensePeftOps, ScaleFloat) {
  auto be = make_cpu_backend<float>();
  const auto x = random_vec<float>(1000, 11);
  const double s = 0.1;  // not exact in float: the op multiplies by float(0.1)
  std::vector<float> y(x.size());
  be->dense->scale(y.data(), x.data(), s, i64(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const volatile float prod = 0.1f * x[i];
    ASSERT_EQ(y[i], prod) << i;
  }
  std::vector<float> z = x;
  be->dense->scale(z.data(), z.data(), s, i64(z.size()));
  EXPECT_TRUE(same_bits(z, y));
}

TEST(DensePeftOps, ScaleDouble) {
  auto be = make_cpu_backend<double>();
  const auto x = random_vec<double>(333, 12);
  std::vector<double> y(x.size());
  be->dense->scale(y.data(), x.data(), 1.0 / 3.0, i64(x.size()));
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], (1.0 / 3.0) * x[i]) << i;
}

TEST(DensePeftOps, ScaleBf16RoundsOnceFromFp32) {
  auto be = make_cpu_backend<bf16>();
  // Two products exactly halfway between bf16 neighbours (ties to even: one rounds up, one down).
  std::vector<bf16> x = random_vec<bf16>(200000, 13);  // large: the OpenMP path too
  x[0] = bf16::from_bits(0x3F81);                       // 1.0078125
  x[1] = bf16::from_bits(0xBF83);                       // -1.0234375
  std::vector<bf16> y(x.size());
  be->dense->scale(y.data(), x.data(), 1.5, i64(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const float prod = 1.5f * float(x[i]);  // exact in fp32 (8-bit × 2-bit significands)
    ASSERT_EQ(y[i].bits, bf16_bits_from_float(prod)) << i;
  }
  // 1.5 · 1.0078125 = 1.51171875 (fp32 0x3FC18000): halfway between 0x3FC1 and 0x3FC2 → 0x3FC2 (even, up);
  // 1.5 · −1.0234375 = −1.53515625 (0xBFC48000): halfway between 0xBFC4 and 0xBFC5 → 0xBFC4 (even, down).
  EXPECT_EQ(y[0].bits, 0x3FC2);
  EXPECT_EQ(y[1].bits, 0xBFC4);
  // s = 0.1 is fp32(0.1) · x in fp32, then rounded: not the double product rounded.
  std::vector<bf16> z = x;
  be->dense->scale(z.data(), z.data(), 0.1, 1000);
  for (size_t i = 0; i < 1000; ++i) {
    const volatile float prod = 0.1f * float(x[i]);
    ASSERT_EQ(z[i].bits, bf16_bits_from_float(prod)) << i;
  }
  for (size_t i = 1000; i < z.size(); ++i) ASSERT_EQ(z[i].bits, x[i].bits);  // n respected
}

TEST(DensePeftOps, ScaleThroughGuardedBackend) {
  auto be = test::make_guarded_backend<float>();
  const auto x = random_vec<float>(64, 14);
  auto* p = static_cast<float*>(be->mem->alloc(64 * 4, "x"));
  be->mem->to_backend(p, x.data(), 64 * 4);
  be->dense->scale(p, p, 2.0, 64);
  std::vector<float> y(64);
  be->mem->to_host(y.data(), p, 64 * 4);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(y[size_t(i)], 2.f * x[size_t(i)]);
  be->mem->free(p);
}

// LoRA dropout: every element either 0 or x·1/(1−p) (rounded once); the drop rate is p; the mask is a function of
// (seed, step, stream/keys, tag, row, column) alone — the same for float, double and bf16, in place or not, with
// explicit keys equal to the implicit (stream << 32) | n ones; other tags, steps and streams draw other masks.
template <typename T>
std::vector<uint8_t> dropout_kept(const LoraDropout& d, i64 N, i64 C) {
  auto be = make_cpu_backend<T>();
  std::vector<T> x(size_t(N * C), T(1.0f)), y(x.size());
  be->dense->lora_dropout(y.data(), x.data(), N, C, d);
  std::vector<uint8_t> kept(x.size());
  const float keep = float(acc_t<T>(1.0 / (1.0 - d.p)));
  for (size_t i = 0; i < y.size(); ++i) {
    const float v = float(y[i]);
    EXPECT_TRUE(v == 0.f || v == float(T(keep))) << i << ": " << v;
    kept[i] = v != 0.f;
  }
  return kept;
}

TEST(DensePeftOps, LoraDropoutMask) {
  const i64 N = 300, C = 70;
  LoraDropout d{0.3, 1234, 7, (3u << 20) ^ 5u, nullptr, 2};
  const auto kf = dropout_kept<float>(d, N, C);
  EXPECT_EQ(kf, dropout_kept<double>(d, N, C));
  EXPECT_EQ(kf, dropout_kept<bf16>(d, N, C));
  double dropped = 0;
  for (uint8_t k : kf) dropped += k == 0;
  EXPECT_NEAR(dropped / double(kf.size()), 0.3, 0.01);  // 21000 draws: sd 0.003
  // Explicit keys (stream << 32) | n draw the implicit mask.
  std::vector<i64> keys(static_cast<size_t>(N));
  for (i64 n = 0; n < N; ++n) keys[size_t(n)] = i64((uint64_t(d.stream) << 32) | uint64_t(n));
  LoraDropout dk = d;
  dk.stream = 0;
  dk.keys = keys.data();
  EXPECT_EQ(kf, dropout_kept<float>(dk, N, C));
  for (auto change : {+[](LoraDropout& e) { e.tag = 3; }, +[](LoraDropout& e) { e.step = 8; },
                      +[](LoraDropout& e) { e.stream ^= 1; }, +[](LoraDropout& e) { e.seed = 1235; }}) {
    LoraDropout e = d;
    change(e);
    const auto ke = dropout_kept<float>(e, N, C);
    i64 same = 0;
    for (size_t i = 0; i < ke.size(); ++i) same += ke[i] == kf[i];
    EXPECT_LT(double(same) / double(ke.size()), 0.7);  // independent masks agree on 0.7² + 0.3² = 58%
  }
  // Values: y = x · 1/(1−p) in fp32, in place.
  auto be = make_cpu_backend<float>();
  auto x = random_vec<float>(N * C, 21);
  const auto x0 = x;
  be->dense->lora_dropout(x.data(), x.data(), N, C, d);
  const float keep = float(1.0 / 0.7);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], kf[i] ? x0[i] * keep : 0.f) << i;
}

TEST(DensePeftOps, LoraDropoutThroughGuardedBackend) {
  auto be = test::make_guarded_backend<float>();
  const i64 N = 8, C = 16;
  auto* p = static_cast<float*>(be->mem->alloc(N * C * 4, "x"));
  const std::vector<float> ones(size_t(N * C), 1.f);
  be->mem->to_backend(p, ones.data(), N * C * 4);
  const LoraDropout d{0.5, 9, 1, 77, nullptr, 0};
  be->dense->lora_dropout(p, p, N, C, d);
  std::vector<float> y(size_t(N * C));
  be->mem->to_host(y.data(), p, N * C * 4);
  auto cpu = dropout_kept<float>(d, N, C);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], cpu[i] ? 2.f : 0.f) << i;
  be->mem->free(p);
}

}  // namespace
}  // namespace moe
