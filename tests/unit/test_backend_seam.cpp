// Owns the BackendSeam.* tests: the arena places slots in an external (device-style) block, and ParamState runs every state pass through the optimizer op table it is given.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "comm/communicator.h"
#include "core/arena.h"
#include "core/error.h"
#include "core/tensor.h"
#include "model/param_table.h"
#include "parallel/zero.h"

namespace moe {
namespace {

TEST(BackendSeam, ArenaPlacesSlotsInAnExternalBlock) {
  Arena a;
  float* f = nullptr;
  bf16* h = nullptr;
  int32_t* ids = nullptr;
  a.reserve(&f, 3);    // 12 bytes → one 64-byte slot
  a.reserve(&h, 40);   // 80 bytes → 128
  a.reserve(&ids, 1);  // 4 bytes → 64
  EXPECT_EQ(a.bytes(), 64 + 128 + 64);
  void* block = std::aligned_alloc(Arena::kAlign, size_t(a.bytes()));
  a.allocate_in(block);
  const auto base = reinterpret_cast<uintptr_t>(block);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f), base);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(h), base + 64);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ids), base + 192);
  EXPECT_THROW(a.allocate_in(block), Error);  // placed once
  Arena b;
  float* g = nullptr;
  b.reserve(&g, 1);
  EXPECT_THROW(b.allocate_in(static_cast<char*>(block) + 4), Error);  // misaligned block
  std::free(block);
}

TEST(BackendSeam, TensorViewSizesAndTypedAccess) {
  std::vector<bf16> h(24);
  const TensorView v = TensorView::of(h.data(), {2, 3, 4});
  EXPECT_EQ(v.dtype, DType::BF16);
  EXPECT_EQ(v.space, MemSpace::Host);
  EXPECT_EQ(v.ndim, 3);
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.bytes(), 48);
  EXPECT_EQ(v.as<bf16>(), h.data());
  EXPECT_THROW(v.as<float>(), Error);  // a bf16 buffer is never read as fp32 by mistake
  const TensorView q(nullptr, DType::NF4, {3, 5}, MemSpace::Cuda);  // 15 four-bit codes: 8 bytes
  EXPECT_EQ(q.bytes(), 8);
  EXPECT_EQ(dtype_bytes(DType::F64, 3), 24);
  EXPECT_THROW(TensorView(nullptr, DType::F32, {1, 2, 3, 4, 5}), Error);
}

// An optimizer table that counts calls and forwards to the CPU one.
struct CountingOptim final : OptimOps {
  std::unique_ptr<OptimOps> cpu = make_cpu_optim_ops();
  int* adamw_calls;
  int* sq_calls;
  int* scale_calls;
  void adamw(const std::vector<AdamWPiece>& p, const AdamWHyper& hp, long t, float gs) override {
    ++*adamw_calls;
    cpu->adamw(p, hp, t, gs);
  }
  double grad_sq_sum(const float* g, i64 n) override {
    ++*sq_calls;
    return cpu->grad_sq_sum(g, n);
  }
  void scale(float* x, i64 n, float c) override {
    ++*scale_calls;
    cpu->scale(x, n, c);
  }
  void round_to_bf16(bf16* d, const float* s, i64 n) override { cpu->round_to_bf16(d, s, n); }
  void accumulate(float* d, const float* s, i64 n) override { cpu->accumulate(d, s, n); }
};

TEST(BackendSeam, ParamStateUpdatesThroughTheOptimTable) {
  ModelConfig m;
  m.vocab_size = 40;
  m.hidden_size = 8;
  m.intermediate_size = 12;
  m.num_layers = 1;
  m.num_heads = 2;
  m.num_kv_heads = 1;
  m.num_experts = 2;
  m.top_k = 1;
  const ParamTable t = build_param_table(m);
  auto self = make_self_communicator();
  for (int stage : {0, 3}) {
    int a = 0, s = 0, c = 0;
    auto ops = std::make_unique<CountingOptim>();
    ops->adamw_calls = &a;
    ops->sq_calls = &s;
    ops->scale_calls = &c;
    ParamState st(t, stage, *self, *self, *self, Precision::Fp32, std::move(ops));
    st.set_params(std::vector<float>(size_t(t.total_numel()), 0.5f));
    st.zero_grads();
    (void)st.reduce_grads();
    st.scale_grads(0.5f);
    TrainConfig tc;
    st.adamw(tc, 1e-3, 1);
    EXPECT_GE(s, 1) << "stage " << stage;
    EXPECT_EQ(c, 1) << "stage " << stage;
    EXPECT_EQ(a, 1) << "stage " << stage;
  }
}

// Records what ParamState plans through OptimOps::reserve and checks every later call stays inside that plan (the
// CUDA table allocates its chunk table and Σg² partials in reserve: a call outside it would allocate mid-run).
struct PlanCheckingOptim final : OptimOps {
  std::unique_ptr<OptimOps> cpu = make_cpu_optim_ops();
  int reserves = 0, outside = 0, calls = 0;
  std::vector<AdamWPiece> planned;
  i64 planned_sq = -1;
  static bool same(const std::vector<AdamWPiece>& a, const std::vector<AdamWPiece>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].p != b[i].p || a[i].g != b[i].g || a[i].m != b[i].m || a[i].v != b[i].v || a[i].n != b[i].n ||
          a[i].decay != b[i].decay)
        return false;
    return true;
  }
  void reserve(const std::vector<AdamWPiece>& p, i64 max_sq_n) override {
    ++reserves;
    outside += calls > 0;  // planned after a step began
    planned = p;
    planned_sq = max_sq_n;
  }
  void adamw(const std::vector<AdamWPiece>& p, const AdamWHyper& hp, long t, float gs) override {
    ++calls;
    outside += !same(p, planned);
    cpu->adamw(p, hp, t, gs);
  }
  double grad_sq_sum(const float* g, i64 n) override {
    ++calls;
    outside += n > planned_sq;
    return cpu->grad_sq_sum(g, n);
  }
  void scale(float* x, i64 n, float c) override { cpu->scale(x, n, c); }
  void round_to_bf16(bf16* d, const float* s, i64 n) override { cpu->round_to_bf16(d, s, n); }
  void accumulate(float* d, const float* s, i64 n) override { cpu->accumulate(d, s, n); }
};

TEST(BackendSeam, ParamStatePlansTheOptimScratchBeforeStepZero) {
  ModelConfig m;
  m.vocab_size = 40;
  m.hidden_size = 8;
  m.intermediate_size = 12;
  m.num_layers = 2;
  m.num_heads = 2;
  m.num_kv_heads = 1;
  m.num_experts = 2;
  m.top_k = 1;
  const ParamTable t = build_param_table(m);
  auto self = make_self_communicator();
  for (int stage : {0, 1, 2, 3}) {
    auto ops = std::make_unique<PlanCheckingOptim>();
    PlanCheckingOptim& o = *ops;
    ParamState st(t, stage, *self, *self, *self, Precision::Fp32, std::move(ops));
    EXPECT_EQ(o.reserves, 1) << "stage " << stage << ": the optimizer scratch is planned once, at construction";
    EXPECT_FALSE(o.planned.empty()) << "stage " << stage;
    st.set_params(std::vector<float>(size_t(t.total_numel()), 0.5f));
    TrainConfig tc;
    for (long step = 1; step <= 2; ++step) {
      st.zero_grads();
      (void)st.reduce_grads();
      st.adamw(tc, 1e-3, step);
    }
    EXPECT_GE(o.calls, 4) << "stage " << stage;
    EXPECT_EQ(o.outside, 0) << "stage " << stage << ": a step used a piece list or Σg² size it did not plan";
    EXPECT_EQ(o.reserves, 1) << "stage " << stage;
  }
}

}  // namespace
}  // namespace moe
