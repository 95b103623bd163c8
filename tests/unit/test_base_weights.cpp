// Owns the BaseWeights.* tests: the frozen LoRA/QLoRA base in backend memory — dense round trips, NF4 units bitwise nf4_dequantize of each entry, storage figures, no allocation after construction.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "guarded_backend.h"
#include "peft/base_weights.h"

namespace moe {
namespace {

// Units like a base table: 0 empty | attention-like dense segment + expert segment | odd-sized tensors (odd tail,
// short block) | a padded unit (zeros after its entry) | empty.
ParamTable small_base() {
  ParamTable t;
  t.begin_unit();
  t.end_unit();
  t.begin_unit();
  t.add("model.layers.0.self_attn.q_proj.weight", {64, 48});
  t.add("model.layers.0.self_attn.k_proj.weight", {16, 48});
  t.mark_expert_begin();
  t.add("model.layers.0.block_sparse_moe.experts.0.w1.weight", {40, 48}, false, true);
  t.add("model.layers.0.block_sparse_moe.experts.0.w3.weight", {40, 48}, false, true);
  t.add("model.layers.0.block_sparse_moe.experts.0.w2.weight", {48, 40}, false, true);
  t.end_unit();
  t.begin_unit();
  t.add("model.layers.1.self_attn.q_proj.weight", {7, 9});     // 63: one short block, odd
  t.add("model.layers.1.self_attn.k_proj.weight", {5, 3});     // 15, starting at an odd offset
  t.add("model.layers.1.self_attn.v_proj.weight", {131, 5});   // 655: 10 full blocks + odd tail
  t.end_unit();
  t.begin_unit();
  t.add("model.layers.2.self_attn.q_proj.weight", {3, 10});
  t.pad_to(64);  // 34 padding elements
  t.end_unit();
  t.begin_unit();
  t.end_unit();
  return t;
}

std::vector<float> unit_values(const ParamTable& t, int u, uint32_t seed) {
  const ParamUnit& pu = t.units()[size_t(u)];
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 0.05f);
  std::vector<float> v(static_cast<size_t>(pu.size()), 0.0f);
  for (const ParamInfo& e : t.entries())
    if (e.unit == u)
      for (i64 i = 0; i < e.numel; ++i) v[size_t(e.offset - pu.begin + i)] = d(g) * (1.0f + float(i % 7));
  return v;
}

template <typename T>
std::vector<T> to_host(MemOps& mem, const T* p, i64 n) {
  std::vector<T> h(static_cast<size_t>(n));
  mem.to_host(h.data(), p, n * i64(sizeof(T)));
  return h;
}

template <typename T>
void check_dense(Backend<T>& be) {
  const ParamTable t = small_base();
  BaseWeights<T> w(t, BaseStorage::Dense, Nf4DoubleQuant::off, *be.mem, be.quant.get());
  EXPECT_EQ(w.stored_bytes(), t.total_numel() * i64(sizeof(T)));
  EXPECT_EQ(w.slot_bytes(), 0);
  EXPECT_EQ(w.numel(), t.tensor_numel());
  EXPECT_EQ(BaseWeights<T>::plan_bytes(t, BaseStorage::Dense, Nf4DoubleQuant::off, dtype_of<T>()),
            w.stored_bytes());
  for (int u = 1; u <= 3; ++u) w.set_unit(u, unit_values(t, u, uint32_t(u)).data());
  for (int u = 1; u <= 3; ++u) {
    const auto x = unit_values(t, u, uint32_t(u));
    const auto got = to_host(*be.mem, w.unit(u), i64(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const T want = T(x[i]);  // fp32/fp64: exact; bf16: rounded to nearest-even once
      ASSERT_EQ(std::memcmp(&got[i], &want, sizeof(T)), 0) << "unit " << u << " element " << i;
    }
    EXPECT_EQ(w.unit(u), w.unit(1) + (t.units()[size_t(u)].begin - t.units()[1].begin));  // stored in place
  }
}

TEST(BaseWeights, DenseRoundTripFloat) { check_dense(*make_cpu_backend<float>()); }
TEST(BaseWeights, DenseRoundTripDouble) { check_dense(*make_cpu_backend<double>()); }
TEST(BaseWeights, DenseRoundTripBf16Rounded) { check_dense(*make_cpu_backend<bf16>()); }
TEST(BaseWeights, DenseRoundTripGuardedBf16) { check_dense(*test::make_guarded_backend<bf16>()); }

// Each entry of unit(u) is bitwise nf4_dequantize(nf4_quantize(entry)) (as T: bf16 rounded once); padding reads 0;
// switching units and back re-dequantizes the same bits; unit() allocates nothing.
template <typename T>
void check_nf4(Backend<T>& be, Nf4DoubleQuant dq) {
  const ParamTable t = small_base();
  BaseWeights<T> w(t, BaseStorage::Nf4, dq, *be.mem, be.quant.get());
  i64 want_bytes = 0;
  for (int u = 0; u < int(t.units().size()); ++u) w.set_unit(u, unit_values(t, u, uint32_t(10 + u)).data());
  const i64 regions = test::MemoryGuard::get().regions();
  for (int round = 0; round < 2; ++round)
    for (int u : {1, 2, 3, 2, 1, 3}) {
      const ParamUnit& pu = t.units()[size_t(u)];
      const auto x = unit_values(t, u, uint32_t(10 + u));
      const auto got = to_host(*be.mem, w.unit(u), pu.size());
      std::vector<bool> covered(size_t(pu.size()), false);
      for (const ParamInfo& e : t.entries()) {
        if (e.unit != u) continue;
        const Nf4Tensor q = nf4_quantize(x.data() + (e.offset - pu.begin), e.numel, dq);
        std::vector<float> ref(static_cast<size_t>(e.numel));
        nf4_dequantize(q, ref.data());
        for (i64 i = 0; i < e.numel; ++i) {
          const size_t at = size_t(e.offset - pu.begin + i);
          const T want = T(ref[size_t(i)]);
          ASSERT_EQ(std::memcmp(&got[at], &want, sizeof(T)), 0) << e.name << " element " << i;
          covered[at] = true;
        }
      }
      for (size_t i = 0; i < covered.size(); ++i)
        if (!covered[i]) {
          ASSERT_EQ(float(got[i]), 0.0f) << "padding element " << i << " of unit " << u;
        }
    }
  EXPECT_EQ(test::MemoryGuard::get().regions(), regions);  // (guarded backend: no region was allocated)
  for (const ParamInfo& e : t.entries()) {
    const auto x = unit_values(t, e.unit, uint32_t(10 + e.unit));
    want_bytes += nf4_quantize(x.data() + (e.offset - t.units()[size_t(e.unit)].begin), e.numel, dq).bytes();
  }
  EXPECT_EQ(w.stored_bytes(), want_bytes);
  EXPECT_EQ(w.slot_bytes(), t.units()[1].size() * i64(sizeof(T)));  // the largest unit
  EXPECT_EQ(BaseWeights<T>::plan_bytes(t, BaseStorage::Nf4, dq, dtype_of<T>()), w.stored_bytes() + w.slot_bytes());
}

TEST(BaseWeights, Nf4UnitsBitwiseNf4DequantizeFloat) {
  auto be = make_cpu_backend<float>();
  check_nf4(*be, Nf4DoubleQuant::off);
  check_nf4(*be, Nf4DoubleQuant::on);
}
TEST(BaseWeights, Nf4UnitsBitwiseNf4DequantizeGuardedBf16) {
  auto be = test::make_guarded_backend<bf16>();
  check_nf4(*be, Nf4DoubleQuant::on);
  check_nf4(*be, Nf4DoubleQuant::off);
}
TEST(BaseWeights, Nf4WithoutQuantTableUsesTheCpuDefault) {
  const ParamTable t = small_base();
  auto mem = make_cpu_mem_ops();
  BaseWeights<float> w(t, BaseStorage::Nf4, Nf4DoubleQuant::on, *mem, nullptr);
  const ParamInfo& e = t.at("model.layers.1.self_attn.v_proj.weight");
  const i64 rel = e.offset - t.units()[size_t(e.unit)].begin;
  const auto x = unit_values(t, e.unit, 1);
  w.set_unit(e.unit, x.data());
  const Nf4Tensor q = nf4_quantize(x.data() + rel, e.numel, Nf4DoubleQuant::on);
  std::vector<float> ref(static_cast<size_t>(e.numel));
  nf4_dequantize(q, ref.data());
  const float* got = w.unit(e.unit) + rel;
  EXPECT_EQ(std::memcmp(got, ref.data(), ref.size() * 4), 0);
  auto guarded = test::make_guarded_backend<float>();  // device memory without its quant table: refused
  EXPECT_THROW(BaseWeights<float>(t, BaseStorage::Nf4, Nf4DoubleQuant::on, *guarded->mem, nullptr), Error);
}

// A realistic expert shape: bytes per base parameter with double quant ≤ 0.53 (QLoRA: 4 bits + ~0.127 bits of
// statistics = 0.5159 bytes).
TEST(BaseWeights, Nf4StoredBytesPerParameterWithDoubleQuant) {
  ParamTable t;
  t.begin_unit();
  t.add("model.layers.0.block_sparse_moe.experts.0.w1.weight", {4096, 1024});
  t.add("model.layers.0.block_sparse_moe.experts.0.w2.weight", {1024, 4096});
  t.end_unit();
  auto mem = make_cpu_mem_ops();
  BaseWeights<bf16> w(t, BaseStorage::Nf4, Nf4DoubleQuant::on, *mem, nullptr);
  const double on = double(w.stored_bytes()) / double(w.numel());
  const double off = double(BaseWeights<bf16>::plan_bytes(t, BaseStorage::Nf4, Nf4DoubleQuant::off, DType::BF16) -
                            w.slot_bytes()) / double(w.numel());
  EXPECT_LE(on, 0.53);
  EXPECT_EQ(w.slot_bytes(), 2 * 4096 * 1024 * 2);
  std::printf("BaseWeights NF4 stored bytes/parameter: double quant %.6f, single %.6f (dense bf16 2.0)\n", on, off);
}

}  // namespace
}  // namespace moe
