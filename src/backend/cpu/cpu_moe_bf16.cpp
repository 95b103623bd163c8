// Owns the CPU MoE op table for bf16 storage (DESIGN §8): fp32 router and combine sums, bf16 expert GEMMs with fp32 accumulation, each bf16 value rounded once.
#include <algorithm>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_moe_common.h"
#include "backend/moe_ops.h"
#include "core/rng.h"
#include "kernels/math/moe.h"
#include "kernels/ref/gemm_ref.h"
#include "kernels/ref/swiglu_ref.h"

namespace moe {

namespace {

// Dropout factor of element i of the row with pair key `key` (ExpertDropout): 0 or 1/(1−p), in fp32.
struct DropoutDraw {
  const ExpertDropout& d;
  Philox ph;
  float keep;
  explicit DropoutDraw(const ExpertDropout& drop)
      : d(drop), ph(drop.seed, RngPurpose::ExpertDropout), keep(float(1.0 / (1.0 - drop.p))) {}
  float operator()(i64 key, i64 i, i64 I) const {
    return moe_math::dropout_factor<float>(ph, key, i, I, d.step, d.p, keep);
  }
};

void widen(float* dst, const bf16* src, i64 n) {
  for (i64 i = 0; i < n; ++i) dst[i] = float(src[i]);
}
void narrow(bf16* dst, const float* src, i64 n) {
  for (i64 i = 0; i < n; ++i) dst[i] = bf16(src[i]);
}

class CpuMoeOpsBf16 final : public MoeOps<bf16> {
 public:
  using T = bf16;
  using A = float;

  void router_jitter(T* xr, A* noise, const T* x, i64 n, double eps, uint64_t seed, uint32_t step,
                     uint32_t stream) override {
    const Philox ph(seed, RngPurpose::RouterJitter);
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) {
      noise[i] = float(moe_math::jitter_factor(ph.uniform(uint64_t(i), step, stream), eps));
      xr[i] = bf16(float(x[i]) * noise[i]);
    }
  }
  // contract: B7 — fp32 logits from the bf16 input (widened exactly) and the fp32 router weight.
  void router_forward(A* logits, A* probs, int* topk_idx, A* topk_w, const T* xr, const A* Wg, const float* bias,
                      const RouterDims& d, double temperature, TopkNorm norm) override {
    float* xf = ws(d.T * d.H);
    widen(xf, xr, d.T * d.H);
    moe::router_forward<float>(logits, probs, topk_idx, topk_w, xf, Wg, bias, d, temperature, norm);
  }
  void router_backward(T* dxr, A* dWg, A* dlogits, const A* dtopk_w, const A* logits, const A* probs,
                       const int* topk_idx, const A* topk_w, const T* xr, const A* Wg, const double* aux_dp,
                       double z_scale, const RouterDims& d, double temperature, TopkNorm norm) override {
    float* xf = ws(2 * d.T * d.H);
    float* dxf = xf + d.T * d.H;
    widen(xf, xr, d.T * d.H);
    moe::router_backward<float>(dxf, dWg, dlogits, dtopk_w, logits, probs, topk_idx, topk_w, xf, Wg, aux_dp, z_scale,
                                d, temperature, norm);
    narrow(dxr, dxf, d.T * d.H);
  }
  void router_stats(RoutingPlan& plan, const A* probs, const A* logits) override {
    fill_router_stats<A>(plan, probs, logits);
  }
  void build_plan(RoutingPlan& plan, const A* probs, double cf, DropPolicy policy) override {
    moe::build_plan<float>(plan, probs, cf, policy);
  }
  void copy_expert_counts_to_host(i64* host, const RoutingPlan& plan) override {
    copy_plan_stats_to_host(host, plan);
  }
  void permute(T* xg, const T* x, const RoutingPlan& plan, i64 H) override { dispatch_gather<bf16>(xg, x, plan, H); }
  // dx = round(Σ_k dxg rows) summed in fp32 in slot order.
  void unpermute(T* dx, const T* dxg, const RoutingPlan& plan, i64 H) override {
    const i64 K = plan.K;
#pragma omp parallel for schedule(static)
    for (i64 t = 0; t < plan.T; ++t)
      for (i64 h = 0; h < H; ++h)
        dx[t * H + h] = bf16(moe_math::unpermute_elem<bf16>(dxg, plan.pair_row.data() + t * K, K, H, h));
  }
  void pair_keys(i64* keys, const RoutingPlan& plan, uint32_t stream) override {
    MT_CHECK(plan.T * plan.K <= (i64(1) << 32), "pair ids need 32 bits, T·K = ", plan.T * plan.K);
    for (i64 r = 0; r < plan.P; ++r) keys[r] = moe_math::pair_key(stream, plan.row_pair[r]);
  }
  // contract: B7 — out = round(Σ_k w · y) accumulated in fp32.
  void combine_forward(T* out, const T* y, const A* topk_w, const RoutingPlan& plan, i64 H) override {
    const i64 K = plan.K;
#pragma omp parallel for schedule(static)
    for (i64 t = 0; t < plan.T; ++t)
      for (i64 h = 0; h < H; ++h)
        out[t * H + h] = bf16(moe_math::combine_elem<bf16>(y, topk_w + t * K, plan.pair_row.data() + t * K, K, H, h));
  }
  void combine_backward(T* dy, A* dtopk_w, const T* dout, const T* y, const A* topk_w, const RoutingPlan& plan,
                        i64 H) override {
    const i64 K = plan.K;
#pragma omp parallel for schedule(static)
    for (i64 t = 0; t < plan.T; ++t) {
      const T* d = dout + t * H;
      for (i64 k = 0; k < K; ++k) {
        const i64 r = plan.pair_row[t * K + k];
        if (r < 0) {
          dtopk_w[t * K + k] = 0.f;
          continue;
        }
        const float wk = topk_w[t * K + k];
        float acc = 0.f;
        for (i64 h = 0; h < H; ++h) {
          acc += float(d[h]) * float(y[r * H + h]);
          dy[r * H + h] = bf16(wk * float(d[h]));
        }
        dtopk_w[t * K + k] = acc;
      }
    }
  }
  // contract: B3 B8 — a = round(x·W1ᵀ), b = round(x·W3ᵀ) (one GEMM when [w1;w3] are stacked), h = round(silu(a)·b·mask)
  // in fp32, y = round(h·W2ᵀ).
  void grouped_mlp_forward(T* y, ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                           const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) override {
    const DropoutDraw draw(drop);
    for (const RowBlock& b : blocks) {
      const i64 n = b.rows, off = b.row, j = b.expert;
      if (n == 0) continue;
      float* ab = ws(3 * n * I + n * H);  // [n, 2I] gate|up, then [n, I] h
      float* hf = ab + 2 * n * I;
      const T* xb = x + off * H;
      if (w.w3[j] == w.w1[j] + I * H) {
        gemm_bf16_f32(ab, xb, w.w1[j], n, 2 * I, H, Trans::No, Trans::Yes, H, H, 2 * I, 1.f, 0.f);
      } else {
        gemm_bf16_f32(ab, xb, w.w1[j], n, I, H, Trans::No, Trans::Yes, H, H, 2 * I, 1.f, 0.f);
        gemm_bf16_f32(ab + I, xb, w.w3[j], n, I, H, Trans::No, Trans::Yes, H, H, 2 * I, 1.f, 0.f);
      }
      T* a = acts.a + off * I;
      T* bb = acts.b + off * I;
      for (i64 r = 0; r < n; ++r)
        for (i64 i = 0; i < I; ++i) {
          a[r * I + i] = bf16(ab[r * 2 * I + i]);
          bb[r * I + i] = bf16(ab[r * 2 * I + I + i]);
        }
      // SwiGLU from the rounded a, b in fp32 (the fp32 kernel on widened values), mask in fp32, rounded once.
      float* af = ab;  // reuse: widened a | b, [n·I] each
      float* bf = ab + n * I;
      widen(af, a, n * I);
      widen(bf, bb, n * I);
      swiglu_forward_ref<float>(hf, af, bf, n * I);
      T* h = acts.hact + off * I;
      for (i64 r = 0; r < n; ++r)
        for (i64 i = 0; i < I; ++i) {
          const float m = drop.keys ? draw(drop.keys[off + r], i, I) : 1.f;
          h[r * I + i] = bf16(drop.keys ? hf[r * I + i] * m : hf[r * I + i]);
        }
      linear_forward_bf16(y + off * H, h, w.w2[j], n, I, H, Accumulate::Overwrite, ws_at(3 * n * I, n * H));
    }
  }
  // dh = dy·W2 (fp32, mask applied in fp32), da/db = round(swiglu'(a, b)·dh), dx = round(da·W1 + db·W3) summed in
  // fp32; weight gradients accumulate in fp32.
  void grouped_mlp_backward(T* dx, ExpertGrads<T>& g, T* /*dh*/, T* da, T* db, const T* dy,
                            const ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                            const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) override {
    const DropoutDraw draw(drop);
    for (const RowBlock& b : blocks) {
      const i64 n = b.rows, off = b.row, j = b.expert;
      if (n == 0) continue;
      float* dhf = ws(5 * n * I + n * H);
      float* af = dhf + n * I;
      float* bf = af + n * I;
      float* daf = bf + n * I;
      float* dbf = daf + n * I;
      float* dxf = dbf + n * I;
      const T* dyb = dy + off * H;
      const T* h = acts.hact + off * I;
      const T* xb = x + off * H;
      // dh [n,I] = dy [n,H] · W2 [H,I]; dW2 [H,I] += dyᵀ · h.
      gemm_bf16_f32(dhf, dyb, w.w2[j], n, I, H, Trans::No, Trans::No, H, I, I, 1.f, 0.f);
      gemm_bf16_f32(g.w2[j], dyb, h, H, I, n, Trans::Yes, Trans::No, H, I, I, 1.f, 1.f);
      if (drop.keys)
        for (i64 r = 0; r < n; ++r)
          for (i64 i = 0; i < I; ++i) dhf[r * I + i] *= draw(drop.keys[off + r], i, I);
      widen(af, acts.a + off * I, n * I);
      widen(bf, acts.b + off * I, n * I);
      swiglu_backward_ref<float>(daf, dbf, dhf, af, bf, n * I);
      T* dab = da + off * I;
      T* dbb = db + off * I;
      narrow(dab, daf, n * I);
      narrow(dbb, dbf, n * I);
      // dx [n,H] = da · W1 + db · W3 in fp32, rounded once; dW1/dW3 [I,H] += daᵀ·x / dbᵀ·x.
      gemm_bf16_f32(dxf, dab, w.w1[j], n, H, I, Trans::No, Trans::No, I, H, H, 1.f, 0.f);
      gemm_bf16_f32(dxf, dbb, w.w3[j], n, H, I, Trans::No, Trans::No, I, H, H, 1.f, 1.f);
      narrow(dx + off * H, dxf, n * H);
      gemm_bf16_f32(g.w1[j], dab, xb, I, H, n, Trans::Yes, Trans::No, I, H, H, 1.f, 1.f);
      gemm_bf16_f32(g.w3[j], dbb, xb, I, H, n, Trans::Yes, Trans::No, I, H, H, 1.f, 1.f);
    }
  }
  void reserve_workspace(i64 Tn, i64 H, i64 I, i64 R) override {
    const i64 need = std::max(2 * Tn * H, R * (5 * I + H));
    if (i64(ws_.size()) < need) ws_.resize(size_t(need));
  }
  // dx = round(dx + dxr · noise) in fp32 (B10).
  void add_router_grad(T* dx, const T* dxr, const A* noise, i64 n) override {
    for (i64 i = 0; i < n; ++i) dx[i] = bf16(float(dx[i]) + (noise ? float(dxr[i]) * noise[i] : float(dxr[i])));
  }

 private:
  // fp32 workspace sized by reserve_workspace before step 0: the widened router input [2·T, H] or one expert
  // block's [R, 5I + H] (gate|up, h and their gradients), whichever is larger.
  std::vector<float> ws_;
  float* ws(i64 n) {
    MT_CHECK(i64(ws_.size()) >= n, "MoE op workspace of ", ws_.size(), " floats, ", n, " needed (reserve_workspace)");
    return ws_.data();
  }
  float* ws_at(i64 off, i64 n) { return ws(off + n) + off; }
};

}  // namespace

template <>
std::unique_ptr<MoeOps<bf16>> make_cpu_moe_ops<bf16>() {
  return std::make_unique<CpuMoeOpsBf16>();
}

}  // namespace moe
