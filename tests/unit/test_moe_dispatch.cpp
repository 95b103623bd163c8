// Owns the MoE dispatch tests (issue 9 item 4): counting-sort plan vs a naive plan, no allocation in build_plan, receive bounds (capacity, dropless factor), ep = 1 aliasing, expert dropout regenerated from pair keys.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <vector>

#include "backend/moe_ops.h"
#include "config/config.h"
#include "core/rng.h"
#include "model/model.h"
#include "moe/dispatcher.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "moe/plan.h"
#include "moe/router.h"
#include "test_util.h"

namespace {
// Stacked vs separate GEMMs: the same dot products, but OpenBLAS's kernels may order a dot product by the call's
// shape (measured: the Haswell sgemm on an AVX-512 machine gives N = 256 and N = 128 results that differ in the last
// ulp for M >= 17, on one thread; dgemm likewise with 2 threads), so "equal" means within a few ulps of the largest
// value: max|a - b| <= 8 eps max|b|. A wrong row, expert, mask or half would be off by O(max|b|).
template <typename T>
void expect_ulps(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0, diff = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::fabs(double(want[i])));
    diff = std::max(diff, std::fabs(double(got[i]) - double(want[i])));
  }
  EXPECT_LE(diff, 8 * double(std::numeric_limits<T>::epsilon()) * scale) << what << ": max|diff| " << diff;
}
}  // namespace

// Heap allocations counted while g_count is set (the whole executable's operator new goes through here).
static std::atomic<bool> g_count{false};
static std::atomic<long> g_allocs{0};
void* operator new(std::size_t n) {
  if (g_count.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using namespace moe;
using moe::test::expect_bad_input;

namespace {

// Random distinct top-k per token.
void random_topk(RoutingPlan& p, std::mt19937& rng) {
  for (i64 t = 0; t < p.T; ++t) {
    std::vector<int> ex(size_t(p.E));
    for (i64 e = 0; e < p.E; ++e) ex[size_t(e)] = int(e);
    std::shuffle(ex.begin(), ex.end(), rng);
    for (i64 k = 0; k < p.K; ++k) p.topk_idx[t * p.K + k] = ex[size_t(k)];
  }
}

// The naive plan, written from DESIGN C4.capacity: for position dropping (or dropless) an expert keeps its first C
// pairs in flat token order; rows are the kept pairs sorted by expert with std::stable_sort (token order within).
struct NaivePlan {
  std::vector<i64> rows, counts;
};
NaivePlan naive_plan(const std::vector<int>& topk, i64 E, i64 cap) {
  NaivePlan n;
  n.counts.assign(size_t(E), 0);
  std::vector<i64> seen(size_t(E), 0), kept;
  for (i64 i = 0; i < i64(topk.size()); ++i)
    if (cap < 0 || seen[size_t(topk[size_t(i)])]++ < cap) kept.push_back(i);
  std::stable_sort(kept.begin(), kept.end(), [&](i64 a, i64 b) { return topk[size_t(a)] < topk[size_t(b)]; });
  for (i64 i : kept) n.counts[size_t(topk[size_t(i)])]++;
  n.rows = kept;
  return n;
}

ModelConfig tiny_model(int layers) {
  ModelConfig m;
  m.vocab_size = 64;
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.num_layers = layers;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.num_experts = 8;
  m.top_k = 2;
  return m;
}

// Activation bytes of rank 0 of an EP group of `ep` ranks (plan only, nothing allocated).
i64 plan_bytes(const MoeConfig& moe, int ep, i64 B = 2, i64 L = 32) {
  const ModelConfig m = tiny_model(2);
  ExpertShardSpec shard;
  if (ep > 1) {
    shard.ep = ep;
    shard.first = 0;
    shard.count = m.num_experts / ep;
  }
  Model<float> model(m, moe, B, L, ModelOptions{AllocPolicy::PlanOnly, shard});
  return model.activation_bytes();
}

}  // namespace

// ---------------------------------------------------------------- plan

TEST(MoePlan, CountingSortMatchesNaivePlan) {
  std::mt19937 rng(7);
  for (const auto& [T, E, K, cf] : std::vector<std::tuple<i64, i64, i64, double>>{
           {1, 1, 1, 0.0}, {17, 4, 2, 0.0}, {64, 8, 2, 0.0}, {33, 6, 3, 0.0}, {64, 8, 2, 1.0}, {50, 5, 2, 0.6}}) {
    SCOPED_TRACE("T=" + std::to_string(T) + " E=" + std::to_string(E) + " K=" + std::to_string(K));
    Arena arena;
    RoutingPlan plan(T, E, K, arena);  // in a caller's arena, as MoeLayer holds it
    arena.allocate();
    random_topk(plan, rng);
    const std::vector<int> topk = plan.topk_idx;
    std::vector<float> probs(size_t(T * E), 0.5f);
    build_plan<float>(plan, probs.data(), cf, DropPolicy::Position);
    const NaivePlan ref = naive_plan(topk, E, expert_capacity(cf, T, K, E));
    ASSERT_EQ(plan.P, i64(ref.rows.size()));
    EXPECT_EQ(plan.counts, ref.counts);
    for (i64 r = 0; r < plan.P; ++r) EXPECT_EQ(plan.row_pair[r], ref.rows[size_t(r)]) << "row " << r;
    for (i64 e = 0; e < E; ++e) EXPECT_EQ(plan.offsets[e + 1] - plan.offsets[e], ref.counts[size_t(e)]);
    // The statistics block holds counts, routed and dropped where PlanStatsLayout says.
    const PlanStatsLayout L = plan.layout();
    for (i64 e = 0; e < E; ++e) EXPECT_EQ(plan.stats[L.counts() + e], ref.counts[size_t(e)]);
    EXPECT_EQ(plan.stats[L.dropped()], T * K - plan.P);
  }
}

// The plan is rebuilt every layer of every micro-batch: no heap traffic (counting-sort and merge scratch are in the
// plan), whichever drop policy.
TEST(MoePlan, BuildPlanAllocatesNothing) {
  std::mt19937 rng(3);
  const i64 T = 256, E = 8, K = 2;
  RoutingPlan plan(T, E, K);
  random_topk(plan, rng);
  std::vector<float> probs(size_t(T * E), 0.25f);
  for (float& p : probs) p = float(rng() % 5) / 5.f;  // ties on purpose
  for (DropPolicy policy : {DropPolicy::Position, DropPolicy::Probs})
    for (double cf : {0.0, 1.0, 0.5}) {
      g_allocs = 0;
      g_count = true;
      build_plan<float>(plan, probs.data(), cf, policy);
      g_count = false;
      EXPECT_EQ(g_allocs.load(), 0) << "capacity_factor " << cf << " policy " << int(policy);
    }
}

// ---------------------------------------------------------------- receive bounds

// With capacity, a rank receives at most C rows per local expert from each source: E·C rows, not ep·T·K.
TEST(MoeBounds, CapacityBoundsReceiveBuffers) {
  MoeConfig dropless, cap1, cap_huge;
  cap1.capacity_factor = 1.0;
  cap_huge.capacity_factor = 8.0;  // E·C ≥ ep·T·K: the worst case binds
  const int ep = 4;
  EXPECT_LT(plan_bytes(cap1, ep), plan_bytes(dropless, ep)) << "receive buffers must shrink with capacity";
  EXPECT_EQ(plan_bytes(cap_huge, ep), plan_bytes(dropless, ep));
  const i64 T = 64, K = 2, E = 8;
  ExpertShardSpec shard;
  shard.ep = ep;
  const i64 C = expert_capacity(1.0, T, K, E);
  EXPECT_EQ(max_expert_rows(T, K, E, cap1, shard), E * C);
  EXPECT_LT(E * C, ep * T * K);
  EXPECT_EQ(max_expert_rows(T, K, E, cap_huge, shard), ep * T * K);
}

TEST(MoeBounds, DroplessFactorSizesBuffers) {
  MoeConfig def, f_ep, f_one;
  f_ep.dropless_buffer_factor = 4;
  f_one.dropless_buffer_factor = 1;
  EXPECT_EQ(plan_bytes(def, 4), plan_bytes(f_ep, 4)) << "the default (0) is the exact worst case, ep";
  EXPECT_LT(plan_bytes(f_one, 4), plan_bytes(def, 4));
  ExpertShardSpec shard;
  shard.ep = 4;
  EXPECT_EQ(max_expert_rows(100, 2, 8, f_one, shard), 200);
  f_one.dropless_buffer_factor = 1.5;
  EXPECT_EQ(max_expert_rows(100, 2, 8, f_one, shard), 300);
}

// A rank that would receive more rows than the dropless bound stops with BadInput naming the key and both counts
// (here ep = 1: all T·K pairs stay local, the buffers hold a quarter of them).
TEST(MoeBounds, DroplessOverflowIsBadInput) {
  const i64 Tn = 32, H = 16, E = 4, K = 2, I = 8;
  MoeConfig mc;
  mc.dropless_buffer_factor = 0.25;
  const ExpertShardSpec local{};
  const auto ops = make_cpu_moe_ops<float>();
  Arena arena;
  MoeScratch<float> ms{};
  MoeLayer<float> layer(*ops, Tn, H, E, K, I, mc, TopkNorm::Renormalize, local, ms, arena);
  MoeScratch<float>::reserve(ms, arena, Tn, H, E, K, I, mc, local);
  arena.allocate();
  std::mt19937 g(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(size_t(Tn * H)), Wg(size_t(E * H)), W(size_t(E * 3 * I * H)), out(size_t(Tn * H));
  for (auto* v : {&x, &Wg, &W})
    for (float& f : *v) f = nd(g);
  ExpertWeights<float> w;
  for (i64 e = 0; e < E; ++e) {
    w.w1.push_back(W.data() + e * 3 * I * H);
    w.w3.push_back(W.data() + e * 3 * I * H + I * H);
    w.w2.push_back(W.data() + e * 3 * I * H + 2 * I * H);
  }
  expect_bad_input([&] { layer.forward(out.data(), x.data(), Wg.data(), w, nullptr, RngCtx{}, Mode::Train); },
                   {"moe.dropless_buffer_factor", "needs 64 receive rows", "hold 16 rows"});
}

TEST(MoeBounds, DroplessFactorKeyRefusesNegativeAndText) {
  expect_bad_input([] { parse_config("moe: {dropless_buffer_factor: -1}\n", {}, "x.yaml"); },
                   {"moe.dropless_buffer_factor"});
  expect_bad_input([] { parse_config("moe: {dropless_buffer_factor: lots}\n", {}, "x.yaml"); },
                   {"moe.dropless_buffer_factor"});
  EXPECT_EQ(parse_config("moe: {dropless_buffer_factor: 1.5}\n", {}, "x.yaml").moe.dropless_buffer_factor, 1.5);
}

// ---------------------------------------------------------------- ep = 1 aliasing

// At ep = 1 the experts read the permuted rows in place and combine reads the expert outputs in place: a layer
// holds two [T·K, H] row buffers (rows at the experts, their outputs), not four, and the shared scratch has no
// exchange staging.
TEST(MoeAlias, Ep1ReadsDispatchedRowsInPlace) {
  const i64 Tn = 64, H = 32, E = 4, K = 2, I = 16, TK = Tn * K;
  MoeConfig mc;  // dropless, no jitter, no dropout
  const ExpertShardSpec local{};
  const auto ops = make_cpu_moe_ops<float>();
  Arena layer_arena, scratch_arena;
  MoeScratch<float> ms{};
  MoeLayer<float> layer(*ops, Tn, H, E, K, I, mc, TopkNorm::Renormalize, local, ms, layer_arena);
  MoeScratch<float>::reserve(ms, scratch_arena, Tn, H, E, K, I, mc, local);
  // What a layer must hold: router logits/probs/weights, the plan, rows at the experts and their outputs
  // (2·T·K·H), the expert activations (3·T·K·I); 64 bytes of alignment slack per buffer.
  const i64 need = 4 * (2 * Tn * E + TK) + (4 + 1 + 8 + 8) * TK + 8 * (3 * E + 3) + 2 * 8 * (E + 1) +
                   4 * 2 * TK * H + 4 * 3 * TK * I;
  EXPECT_LE(layer_arena.bytes(), need + 64 * 16) << "per-layer dispatch buffers beyond two [T·K, H]";
  scratch_arena.allocate();
  EXPECT_EQ(ms.xg, nullptr);
  EXPECT_EQ(ms.ye, nullptr);
  EXPECT_EQ(ms.dye, nullptr);
  EXPECT_EQ(ms.dxg, nullptr);
}

// ---------------------------------------------------------------- expert dropout from pair keys

// The layer regenerates the dropout mask at the experts from (seed, step, layer, micro-batch, pair); the result is
// the one (to a few ulps: expect_ulps) of a mask drawn per pair at the token's side, as DESIGN C4.expert defines it: mask[r, i] = 0 when
// Philox(seed, ExpertDropout).uniform(pair·I + i, step, rng_stream(layer, micro)) < p, else 1/(1−p).
TEST(MoeDropout, RegeneratedMaskMatchesPairDraws) {
  const i64 Tn = 24, H = 8, E = 4, K = 2, I = 6;
  MoeConfig mc;
  mc.expert_dropout = 0.3;
  mc.capacity_factor = 0.75;
  const ExpertShardSpec local{};
  const auto ops = make_cpu_moe_ops<double>();
  Arena arena;
  MoeScratch<double> ms{};
  MoeLayer<double> layer(*ops, Tn, H, E, K, I, mc, TopkNorm::Renormalize, local, ms, arena);
  MoeScratch<double>::reserve(ms, arena, Tn, H, E, K, I, mc, local);
  arena.allocate();
  std::mt19937_64 g(5);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> x(size_t(Tn * H)), Wg(size_t(E * H)), W(size_t(E * 3 * I * H)), out(size_t(Tn * H));
  for (auto* v : {&x, &Wg, &W})
    for (double& f : *v) f = nd(g);
  ExpertWeights<double> w;
  for (i64 e = 0; e < E; ++e) {
    w.w1.push_back(W.data() + e * 3 * I * H);
    w.w3.push_back(W.data() + e * 3 * I * H + I * H);
    w.w2.push_back(W.data() + e * 3 * I * H + 2 * I * H);
  }
  RngCtx rc;
  rc.seed = 11;
  rc.step = 4;
  rc.layer = 1;
  rc.global_micro = 3;
  layer.forward(out.data(), x.data(), Wg.data(), w, nullptr, rc, Mode::Train);

  // Reference from the separate kernels with an explicit mask.
  std::vector<double> logits(size_t(Tn * E)), probs(logits.size()), tw(size_t(Tn * K));
  RoutingPlan plan(Tn, E, K);
  router_forward<double>(logits.data(), probs.data(), plan.topk_idx.data(), tw.data(), x.data(), Wg.data(), nullptr,
                         RouterDims{Tn, H, E, K}, 1.0, TopkNorm::Renormalize);
  build_plan<double>(plan, probs.data(), mc.capacity_factor, mc.drop_policy);
  ASSERT_GT(plan.dropped, 0);
  const Philox ph(rc.seed, RngPurpose::ExpertDropout);
  const uint32_t stream = rng_stream(rc.layer, rc.global_micro);
  std::vector<double> mask(size_t(plan.P * I));
  i64 zeros = 0;
  for (i64 r = 0; r < plan.P; ++r)
    for (i64 i = 0; i < I; ++i) {
      const uint64_t pair = uint64_t(plan.row_pair[r]);
      const bool drop = ph.uniform(pair * uint64_t(I) + uint64_t(i), rc.step, stream) < mc.expert_dropout;
      mask[size_t(r * I + i)] = drop ? 0.0 : 1.0 / (1.0 - mc.expert_dropout);
      zeros += drop;
    }
  ASSERT_GT(zeros, 0);
  std::vector<double> xg(size_t(plan.P * H)), y(xg.size()), a(size_t(plan.P * I)), b(a.size()), h(a.size()),
      ref(out.size());
  ExpertMlpActs<double> acts{a.data(), b.data(), h.data()};
  dispatch_gather<double>(xg.data(), x.data(), plan, H);
  expert_mlp_forward<double>(y.data(), acts, xg.data(), mask.data(), std::vector<i64>(plan.counts), w, H, I);
  combine_forward<double>(ref.data(), y.data(), tw.data(), plan, H);
  expect_ulps(out, ref, "layer output vs separate kernels with the explicit mask");
}

// ---------------------------------------------------------------- grouped experts, [w1;w3] stacked

// With [w1;w3] stacked the gate and up projections run as one GEMM (and their weight gradients as one); every
// value must be the one of the two-GEMM path (each element is the same dot product; to a few ulps, see expect_ulps).
template <typename T>
void stacked_equals_separate(i64 H, i64 I, const std::vector<i64>& rows) {
  const i64 E = i64(rows.size());
  i64 R = 0;
  for (i64 n : rows) R += n;
  std::mt19937 g(17);
  std::normal_distribution<double> nd(0.0, 1.0);
  auto rnd = [&](i64 n) {
    std::vector<T> v;
    v.resize(size_t(n));
    for (T& f : v) f = T(nd(g));
    return v;
  };
  const std::vector<T> x = rnd(R * H), dy = rnd(R * H), Wsep = rnd(E * 3 * I * H);
  // The same weights in two layouts: separate (w1 | w2 | w3 per expert) and stacked ([w1;w3] | w2).
  std::vector<T> Wstk(Wsep.size());
  for (i64 e = 0; e < E; ++e) {
    const T* s = Wsep.data() + e * 3 * I * H;
    T* d = Wstk.data() + e * 3 * I * H;
    std::copy(s, s + I * H, d);                              // w1
    std::copy(s + 2 * I * H, s + 3 * I * H, d + I * H);      // w3
    std::copy(s + I * H, s + 2 * I * H, d + 2 * I * H);      // w2
  }
  std::vector<RowBlock> blocks;
  i64 row = 0;
  for (i64 e = 0; e < E; ++e) {
    blocks.push_back({e, row, rows[size_t(e)]});
    row += rows[size_t(e)];
  }
  const auto ops = make_cpu_moe_ops<T>();
  ops->reserve_workspace(R, H, I, R);  // before step 0, as MoeLayer does
  struct Out {
    std::vector<T> y, dx, a, b, h, g1, g3, g2;
  };
  auto run = [&](const std::vector<T>& W, bool stacked) {
    Out o;
    o.y.resize(size_t(R * H));
    o.dx.resize(size_t(R * H));
    o.a.resize(size_t(R * I));
    o.b.resize(o.a.size());
    o.h.resize(o.a.size());
    std::vector<T> G(W.size(), T(0)), dh(o.a.size()), da(o.a.size()), db(o.a.size());
    ExpertWeights<T> w;
    ExpertGrads<T> gr;
    for (i64 e = 0; e < E; ++e) {
      const i64 b0 = e * 3 * I * H, o3 = stacked ? I * H : 2 * I * H, o2 = stacked ? 2 * I * H : I * H;
      w.w1.push_back(W.data() + b0);
      w.w3.push_back(W.data() + b0 + o3);
      w.w2.push_back(W.data() + b0 + o2);
      gr.w1.push_back(G.data() + b0);
      gr.w3.push_back(G.data() + b0 + o3);
      gr.w2.push_back(G.data() + b0 + o2);
    }
    ExpertMlpActs<T> acts{o.a.data(), o.b.data(), o.h.data()};
    ops->grouped_mlp_forward(o.y.data(), acts, x.data(), blocks, ExpertDropout{}, w, H, I);
    ops->grouped_mlp_backward(o.dx.data(), gr, dh.data(), da.data(), db.data(), dy.data(), acts, x.data(), blocks,
                              ExpertDropout{}, w, H, I);
    for (i64 e = 0; e < E; ++e) {
      o.g1.insert(o.g1.end(), gr.w1[size_t(e)], gr.w1[size_t(e)] + I * H);
      o.g3.insert(o.g3.end(), gr.w3[size_t(e)], gr.w3[size_t(e)] + I * H);
      o.g2.insert(o.g2.end(), gr.w2[size_t(e)], gr.w2[size_t(e)] + I * H);
    }
    return o;
  };
  const Out s = run(Wsep, false), k = run(Wstk, true);
  expect_ulps(k.a, s.a, "a");
  expect_ulps(k.b, s.b, "b");
  expect_ulps(k.y, s.y, "y");
  expect_ulps(k.dx, s.dx, "dx");
  expect_ulps(k.g1, s.g1, "g1");
  expect_ulps(k.g3, s.g3, "g3");
  expect_ulps(k.g2, s.g2, "g2");
}

TEST(MoeExperts, StackedGateUpEqualsSeparate) {
  stacked_equals_separate<float>(64, 128, {1, 0, 17, 256, 3, 96});
  stacked_equals_separate<float>(32, 24, {5, 64, 200});
  stacked_equals_separate<double>(64, 128, {1, 17, 256, 96});
}
