// Owns the Nf4Op.* tests: the backend's NF4 dequantization (QuantOps, kernels/math/nf4.h) gives bitwise nf4_dequantize's fp32 values (themselves bit-identical to bitsandbytes, oracle.test_nf4), as float, double and bf16, on the CPU table and through the guarded device-style wrapper.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "guarded_backend.h"
#include "peft/nf4.h"

namespace moe {
namespace {

// Weights of varied scale per block (so the double-quantized absmax values spread over the dynamic map).
std::vector<float> weights(i64 n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::uniform_real_distribution<float> s(0.001f, 0.2f);
  std::vector<float> v(static_cast<size_t>(n));
  float scale = s(g);
  for (i64 i = 0; i < n; ++i) {
    if (i % 64 == 0) scale = s(g);
    v[size_t(i)] = scale * d(g);
  }
  return v;
}

Nf4View host_view(const Nf4Tensor& t) {
  Nf4View v;
  v.n = t.n;
  v.dq = t.dq;
  v.codes = t.codes.data();
  v.absmax = t.absmax.empty() ? nullptr : t.absmax.data();
  v.qabsmax = t.qabsmax.empty() ? nullptr : t.qabsmax.data();
  v.absmax2 = t.absmax2.empty() ? nullptr : t.absmax2.data();
  v.offset = t.offset;
  return v;
}

// n: 1, an odd tail, a short single block, > 256 blocks (several absmax2 blocks) with an odd tail, and one past the
// OpenMP threshold.
const i64 kSizes[] = {1, 3, 63, 64, 64 * 300 + 37, 70001};

TEST(Nf4Op, CpuFloatEqualsNf4DequantizeBitwise) {
  auto be = make_cpu_backend<float>();
  for (Nf4DoubleQuant dq : {Nf4DoubleQuant::off, Nf4DoubleQuant::on})
    for (i64 n : kSizes) {
      const auto x = weights(n, uint32_t(n));
      const Nf4Tensor t = nf4_quantize(x.data(), n, dq);
      std::vector<float> ref(static_cast<size_t>(n)), got(size_t(n), -7.f);
      nf4_dequantize(t, ref.data());
      be->quant->nf4_dequantize(got.data(), host_view(t));
      EXPECT_EQ(std::memcmp(ref.data(), got.data(), size_t(n) * 4), 0) << "n " << n << " dq " << int(dq);
    }
}

TEST(Nf4Op, CpuBf16IsTheFp32ValueRoundedOnceAndDoubleExact) {
  auto b16 = make_cpu_backend<bf16>();
  auto b64 = make_cpu_backend<double>();
  for (Nf4DoubleQuant dq : {Nf4DoubleQuant::off, Nf4DoubleQuant::on}) {
    const i64 n = 64 * 300 + 37;
    const auto x = weights(n, 9);
    const Nf4Tensor t = nf4_quantize(x.data(), n, dq);
    std::vector<float> ref(static_cast<size_t>(n));
    nf4_dequantize(t, ref.data());
    std::vector<bf16> h(static_cast<size_t>(n));
    std::vector<double> d(static_cast<size_t>(n));
    b16->quant->nf4_dequantize(h.data(), host_view(t));
    b64->quant->nf4_dequantize(d.data(), host_view(t));
    for (i64 i = 0; i < n; ++i) {
      ASSERT_EQ(h[size_t(i)].bits, bf16_bits_from_float(ref[size_t(i)])) << i;
      ASSERT_EQ(d[size_t(i)], double(ref[size_t(i)])) << i;
    }
  }
}

// The double-quantized absmax is dmap[q]·absmax2 rounded, then + offset rounded: a hand check of one block.
TEST(Nf4Op, DoubleQuantAbsmaxByHand) {
  const i64 n = 128;
  auto x = weights(n, 4);
  const Nf4Tensor t = nf4_quantize(x.data(), n, Nf4DoubleQuant::on);
  const auto& m = dynamic_map_signed();
  const auto& c = nf4_code();
  auto be = make_cpu_backend<float>();
  std::vector<float> got(static_cast<size_t>(n));
  be->quant->nf4_dequantize(got.data(), host_view(t));
  for (i64 i = 0; i < n; ++i) {
    volatile float am = m[t.qabsmax[size_t(i / 64)]] * t.absmax2[0];
    am = am + t.offset;
    const int code = (i % 2 == 0) ? (t.codes[size_t(i / 2)] >> 4) : (t.codes[size_t(i / 2)] & 0xF);
    const volatile float v = c[size_t(code)] * am;
    ASSERT_EQ(got[size_t(i)], v) << i;
  }
}

TEST(Nf4Op, GuardedBackendTakesDevicePointers) {
  auto be = test::make_guarded_backend<bf16>();
  MemOps& mem = *be->mem;
  const i64 n = 64 * 5 + 3;
  const auto x = weights(n, 21);
  const Nf4Tensor t = nf4_quantize(x.data(), n, Nf4DoubleQuant::on);
  Buffer<uint8_t> codes(mem, i64(t.codes.size()), "codes"), qa(mem, i64(t.qabsmax.size()), "qabsmax");
  Buffer<float> a2(mem, i64(t.absmax2.size()), "absmax2");
  Buffer<bf16> out(mem, n, "out");
  mem.to_backend(codes.data(), t.codes.data(), codes.size());
  mem.to_backend(qa.data(), t.qabsmax.data(), qa.size());
  mem.to_backend(a2.data(), t.absmax2.data(), a2.size() * 4);
  Nf4View v = host_view(t);
  EXPECT_THROW(be->quant->nf4_dequantize(out.data(), v), Error);  // host codes refused
  v.codes = codes.data();
  v.qabsmax = qa.data();
  v.absmax2 = a2.data();
  be->quant->nf4_dequantize(out.data(), v);
  std::vector<bf16> got(static_cast<size_t>(n));
  mem.to_host(got.data(), out.data(), n * 2);
  std::vector<float> ref(static_cast<size_t>(n));
  nf4_dequantize(t, ref.data());
  for (i64 i = 0; i < n; ++i) ASSERT_EQ(got[size_t(i)].bits, bf16_bits_from_float(ref[size_t(i)])) << i;
}

}  // namespace
}  // namespace moe
