// Owns the QuantGpu.* tests: the CUDA NF4 dequantization (QuantOps) bitwise the CPU table's (bf16 and float; double
// quant on and off; odd tails), BaseWeights<T> on the CUDA backend bitwise the CPU one, and the LoRA dense pieces on
// the GPU: scale bitwise the CPU, linear_backward with a frozen weight (dW null, x null) giving the dx of the call with
// a dW. Exits 77 (CTest SKIP) without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu/cpu_dense.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#include "gpu_buffer.h"
#include "gpu_tolerance.h"
#include "peft/base_weights.h"

namespace moe {
namespace {

using gpu_tol::Kind;

// Weights with a per-block scale (the double-quantized absmax spreads over the dynamic map).
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

template <typename E>
int bitwise_mismatches(const char* what, const std::vector<E>& got, const std::vector<E>& ref) {
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::memcmp(&got[i], &ref[i], sizeof(E)) != 0) {
      if (bad < 5) std::printf("  %s[%zu]: gpu %.9g cpu %.9g\n", what, i, double(got[i]), double(ref[i]));
      ++bad;
    }
  std::printf("%s: %zu values, %d not bitwise equal\n", what, ref.size(), bad);
  return bad;
}

template <typename T>
class QuantGpu : public ::testing::Test {
 protected:
  void SetUp() override { be = make_cuda_backend<T>(0); }
  cudaStream_t s() const { return static_cast<cudaStream_t>(be->stream.handle); }
  std::unique_ptr<Backend<T>> be;
};

using Types = ::testing::Types<bf16, float>;
TYPED_TEST_SUITE(QuantGpu, Types);

TYPED_TEST(QuantGpu, Nf4DequantizeBitwiseCpu) {
  using T = TypeParam;
  auto cpu = make_cpu_quant_ops<T>();
  for (Nf4DoubleQuant dq : {Nf4DoubleQuant::off, Nf4DoubleQuant::on})
    for (i64 n : {i64(1), i64(3), i64(63), i64(64 * 300 + 37), i64((1 << 20) + 7)}) {
      const auto x = weights(n, uint32_t(n));
      const Nf4Tensor q = nf4_quantize(x.data(), n, dq);
      Nf4View hv;
      hv.n = n;
      hv.dq = dq;
      hv.codes = q.codes.data();
      hv.absmax = q.absmax.data();
      hv.qabsmax = q.qabsmax.data();
      hv.absmax2 = q.absmax2.data();
      hv.offset = q.offset;
      std::vector<T> ref(static_cast<size_t>(n));
      cpu->nf4_dequantize(ref.data(), hv);
      Dev<uint8_t> codes(q.codes), qa(q.qabsmax);
      Dev<float> am(q.absmax), am2(q.absmax2);
      Dev<T> out(std::vector<T>(static_cast<size_t>(n)));
      out.poison();
      Nf4View dv = hv;
      dv.codes = codes.p;
      dv.absmax = am.p;
      dv.qabsmax = qa.p;
      dv.absmax2 = am2.p;
      this->be->quant->nf4_dequantize(out.p, dv);
      EXPECT_EQ(bitwise_mismatches("nf4 dequantize", out.back(this->s()), ref), 0)
          << "n " << n << " dq " << int(dq);
    }
}

// BaseWeights on the CUDA backend (device buffers, the CUDA quant table) gives the CPU BaseWeights' unit bits.
TYPED_TEST(QuantGpu, BaseWeightsNf4AndDenseBitwiseCpu) {
  using T = TypeParam;
  ParamTable t;
  t.begin_unit();
  t.end_unit();
  t.begin_unit();
  t.add("model.layers.0.self_attn.q_proj.weight", {256, 192});
  t.add("model.layers.0.self_attn.k_proj.weight", {7, 9});
  t.mark_expert_begin();
  t.add("model.layers.0.block_sparse_moe.experts.0.w1.weight", {96, 192}, false, true);
  t.end_unit();
  t.begin_unit();
  t.add("model.layers.1.self_attn.q_proj.weight", {131, 5});
  t.pad_to(64);
  t.end_unit();
  auto cpu_mem = make_cpu_mem_ops();
  for (BaseStorage kind : {BaseStorage::Dense, BaseStorage::Nf4})
    for (Nf4DoubleQuant dq : {Nf4DoubleQuant::off, Nf4DoubleQuant::on}) {
      BaseWeights<T> g(t, kind, dq, *this->be->mem, this->be->quant.get());
      BaseWeights<T> c(t, kind, dq, *cpu_mem, nullptr);
      for (int u = 0; u < 3; ++u) {
        const auto x = weights(t.units()[size_t(u)].size(), uint32_t(100 + u));
        g.set_unit(u, x.data());
        c.set_unit(u, x.data());
      }
      EXPECT_EQ(g.stored_bytes(), c.stored_bytes());
      for (int u : {1, 2, 1}) {
        const i64 n = t.units()[size_t(u)].size();
        std::vector<T> got(static_cast<size_t>(n));
        const T* p = g.unit(u);
        this->be->mem->to_host(got.data(), p, n * i64(sizeof(T)));
        const T* r = c.unit(u);
        EXPECT_EQ(bitwise_mismatches("base unit", got, std::vector<T>(r, r + n)), 0)
            << "unit " << u << " kind " << int(kind) << " dq " << int(dq);
      }
    }
}

// scale: the same math::scale_round on both sides, so bitwise (in place too).
TYPED_TEST(QuantGpu, ScaleBitwiseCpu) {
  using T = TypeParam;
  auto cpu = make_cpu_dense_ops<T>();
  const auto xf = weights(100003, 7);
  std::vector<T> x(xf.begin(), xf.end());
  for (double sc : {2.0, 0.1, 16.0 / 3.0}) {
    std::vector<T> ref(x.size());
    cpu->scale(ref.data(), x.data(), sc, i64(x.size()));
    Dev<T> gx(x), gy(std::vector<T>(x.size()));
    gy.poison();
    this->be->dense->scale(gy.p, gx.p, sc, i64(x.size()));
    this->be->dense->scale(gx.p, gx.p, sc, i64(x.size()));
    EXPECT_EQ(bitwise_mismatches("scale", gy.back(this->s()), ref), 0) << sc;
    EXPECT_EQ(bitwise_mismatches("scale in place", gx.back(this->s()), ref), 0) << sc;
  }
}

// linear_backward with dW null (and x null): dx is the GPU's own dx of the call with a dW (bitwise), and within the
// GEMM tolerance of the CPU's.
TYPED_TEST(QuantGpu, LinearBackwardFrozenWeight) {
  using T = TypeParam;
  auto cpu = make_cpu_dense_ops<T>();
  const i64 N = 37, in = 67, out = 45;
  auto f = [](const std::vector<float>& v) { return std::vector<T>(v.begin(), v.end()); };
  const auto x = f(weights(N * in, 1)), W = f(weights(out * in, 2)), dy = f(weights(N * out, 3)),
             dx0 = f(weights(N * in, 4));
  for (Accumulate acc : {Accumulate::Overwrite, Accumulate::Add}) {
    std::vector<T> dx = dx0;
    std::vector<char> ws(size_t(cpu->linear_backward_workspace_bytes(N, in, out)) + 16);
    cpu->linear_backward(dx.data(), nullptr, dy.data(), nullptr, W.data(), N, in, out, acc, ws.data());
    Dev<T> gx(x), gW(W), gdy(dy), gdx(dx0), gdx2(dx0);
    Dev<float> gdW(std::vector<float>(size_t(out * in)));
    this->be->dense->linear_backward(gdx.p, nullptr, gdy.p, nullptr, gW.p, N, in, out, acc, nullptr);
    this->be->dense->linear_backward(gdx2.p, gdW.p, gdy.p, gx.p, gW.p, N, in, out, acc, nullptr);
    const auto got = gdx.back(this->s());
    EXPECT_EQ(gpu_tol::count_bad("frozen dx", got, dx,
                                 std::is_same<T, bf16>::value ? Kind::Bf16Gemm : Kind::Fp32), 0);
    EXPECT_EQ(bitwise_mismatches("frozen dx vs dx with dW", got, gdx2.back(this->s())), 0);
  }
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  if (moe::cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping the GPU quant tests\n");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
