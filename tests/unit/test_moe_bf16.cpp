// Owns the MoE bf16 tests (DESIGN §8, B7/B8): MoeLayer<bf16> routes exactly as fp32 on the same inputs (fp32 router) and its outputs and gradients stay within bf16 rounding of the fp32 layer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "backend/moe_ops.h"
#include "core/bf16.h"
#include "moe/dispatcher.h"
#include "moe/moe_layer.h"

using namespace moe;

namespace {

struct Case {
  i64 Tn = 48, H = 32, E = 4, K = 2, I = 24;
};

template <typename T>
struct LayerRun {
  std::vector<T> out, dx;
  std::vector<acc_t<T>> dWg, g;  // g: all expert grads [E · 3IH]
  std::vector<int> topk;
  std::vector<i64> counts;
  RouterStats stats;
};

// Same bf16-representable inputs for both precisions; experts stored [w1;w3] stacked then w2 when `stacked`.
template <typename T>
LayerRun<T> run(const MoeConfig& mc, bool stacked, Mode mode) {
  const Case c;
  const i64 Tn = c.Tn, H = c.H, E = c.E, K = c.K, I = c.I;
  std::mt19937 g(21);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto rnd = [&](i64 n, float s) {
    std::vector<float> v;
    v.resize(size_t(n));
    for (float& f : v) f = round_bf16(s * nd(g));
    return v;
  };
  const std::vector<float> x = rnd(Tn * H, 1.f), Wg = rnd(E * H, 0.3f), W = rnd(E * 3 * I * H, 0.2f),
                           dout = rnd(Tn * H, 1.f);
  std::vector<T> xt(x.begin(), x.end()), Wt(W.size()), dt(dout.begin(), dout.end());
  std::vector<acc_t<T>> Wga(Wg.begin(), Wg.end());
  ExpertWeights<T> w;
  LayerRun<T> r;
  r.g.assign(W.size(), 0);
  ExpertGrads<T> gr;
  // W holds w1 | w3 | w2 of expert e at e·3IH; the layer sees them stacked ([w1;w3] | w2) or as w1 | w2 | w3.
  for (i64 e = 0; e < E; ++e) {
    const i64 base = e * 3 * I * H;
    const i64 o1 = base, o3 = stacked ? base + I * H : base + 2 * I * H, o2 = stacked ? base + 2 * I * H : base + I * H;
    std::copy(W.begin() + base, W.begin() + base + I * H, Wt.begin() + o1);
    std::copy(W.begin() + base + I * H, W.begin() + base + 2 * I * H, Wt.begin() + o3);
    std::copy(W.begin() + base + 2 * I * H, W.begin() + base + 3 * I * H, Wt.begin() + o2);
    w.w1.push_back(Wt.data() + o1);
    w.w3.push_back(Wt.data() + o3);
    w.w2.push_back(Wt.data() + o2);
    gr.w1.push_back(r.g.data() + o1);
    gr.w3.push_back(r.g.data() + o3);
    gr.w2.push_back(r.g.data() + o2);
  }
  const auto ops = make_cpu_moe_ops<T>();
  Arena arena;
  MoeScratch<T> ms{};
  const ExpertShardSpec local{};
  MoeLayer<T> layer(*ops, Tn, H, E, K, I, mc, TopkNorm::Renormalize, local, ms, arena);
  MoeScratch<T>::reserve(ms, arena, Tn, H, E, K, I, mc, local);
  arena.allocate();
  RngCtx rc;
  rc.seed = 5;
  rc.step = 2;
  r.out.resize(size_t(Tn * H));
  r.dx.resize(size_t(Tn * H));
  r.dWg.assign(size_t(E * H), 0);
  layer.forward(r.out.data(), xt.data(), Wga.data(), w, nullptr, rc, mode);
  std::vector<double> aux(size_t(E), 0.01);
  layer.backward(r.dx.data(), dt.data(), Wga.data(), w, r.dWg.data(), gr, aux.data(), 0.1);
  r.topk = layer.plan().topk_idx;
  r.counts = layer.plan().counts;
  r.stats = layer.stats();
  return r;
}

template <typename A, typename B>
double rel_err(const std::vector<A>& a, const std::vector<B>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / std::max(den, 1e-30);
}

void compare(const MoeConfig& mc, Mode mode) {
  for (bool stacked : {false, true}) {
    SCOPED_TRACE(stacked ? "[w1;w3] stacked: one gate+up GEMM" : "separate w1, w3");
    const LayerRun<float> f = run<float>(mc, stacked, mode);
    const LayerRun<bf16> b = run<bf16>(mc, stacked, mode);
    // B7: the router runs in fp32 on the same (exactly widened) input: identical routing and statistics.
    EXPECT_EQ(b.topk, f.topk);
    EXPECT_EQ(b.counts, f.counts);
    EXPECT_EQ(b.stats.prob_sum, f.stats.prob_sum);
    EXPECT_EQ(b.stats.lse_sq_sum, f.stats.lse_sq_sum);
    // Values within bf16 rounding of fp32: 8 significant bits (2^-8 ≈ 3.9e-3 relative), a few roundings deep.
    EXPECT_LT(rel_err(b.out, f.out), 1.5e-2);
    EXPECT_LT(rel_err(b.dx, f.dx), 1.5e-2);
    EXPECT_LT(rel_err(b.dWg, f.dWg), 1.5e-2);
    EXPECT_LT(rel_err(b.g, f.g), 1.5e-2);
    EXPECT_GT(rel_err(b.out, f.out), 0.0) << "bf16 outputs identical to fp32: nothing was rounded";
  }
}

}  // namespace

TEST(MoeBf16, DroplessCloseToFp32) { compare(MoeConfig{}, Mode::Train); }

// (No jitter here: bf16 stores the jittered router input rounded, so routing may differ from fp32.)
TEST(MoeBf16, CapacityDropoutCloseToFp32) {
  MoeConfig mc;
  mc.capacity_factor = 1.0;
  mc.expert_dropout = 0.2;
  compare(mc, Mode::Train);
}

// The stacked and the separate expert layouts compute the same bf16 values (one GEMM of [w1;w3] or two).
TEST(MoeBf16, StackedGateUpEqualsSeparate) {
  MoeConfig mc;
  mc.expert_dropout = 0.1;
  const LayerRun<bf16> a = run<bf16>(mc, false, Mode::Train), b = run<bf16>(mc, true, Mode::Train);
  EXPECT_EQ(a.topk, b.topk);
  // Each gate/up element is the same fp32 dot product rounded once: equal up to the GEMM library's blocking.
  EXPECT_LT(rel_err(a.out, b.out), 1e-2);
  EXPECT_LT(rel_err(a.dx, b.dx), 1e-2);
}
