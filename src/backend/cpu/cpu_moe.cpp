// Owns the CPU MoE op table: today's src/moe kernels (router, plan, gather, combine, expert GEMMs) behind MoeOps, plus expert dropout regenerated from pair keys.
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

// x[r·I + i] *= mask(r, i) for the rows [row0, row0 + n) of an expert buffer (see ExpertDropout).
template <typename T>
void apply_dropout(T* x, const ExpertDropout& d, i64 row0, i64 n, i64 I) {
  const Philox ph(d.seed, RngPurpose::ExpertDropout);
  const T keep_scale = T(1.0 / (1.0 - d.p));
#pragma omp parallel for schedule(static)
  for (i64 r = row0; r < row0 + n; ++r) {
    T* xr = x + r * I;
    for (i64 i = 0; i < I; ++i) xr[i] *= moe_math::dropout_factor<T>(ph, d.keys[r], i, I, d.step, d.p, keep_scale);
  }
}

template <typename T>
class CpuMoeOps final : public MoeOps<T> {
 public:
  using A = acc_t<T>;
  static_assert(std::is_same<A, T>::value, "the CPU MoE ops exist for float and double");

  void router_jitter(T* xr, A* noise, const T* x, i64 n, double eps, uint64_t seed, uint32_t step,
                     uint32_t stream) override {
    const Philox ph(seed, RngPurpose::RouterJitter);
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) {
      noise[i] = T(moe_math::jitter_factor(ph.uniform(uint64_t(i), step, stream), eps));
      xr[i] = x[i] * noise[i];
    }
  }
  void router_forward(A* logits, A* probs, int* topk_idx, A* topk_w, const T* xr, const A* Wg, const float* bias,
                      const RouterDims& d, double temperature, TopkNorm norm) override {
    moe::router_forward<T>(logits, probs, topk_idx, topk_w, xr, Wg, bias, d, temperature, norm);
  }
  void router_backward(T* dxr, A* dWg, A* dlogits, const A* dtopk_w, const A* logits, const A* probs,
                       const int* topk_idx, const A* topk_w, const T* xr, const A* Wg, const double* aux_dp,
                       double z_scale, const RouterDims& d, double temperature, TopkNorm norm) override {
    moe::router_backward<T>(dxr, dWg, dlogits, dtopk_w, logits, probs, topk_idx, topk_w, xr, Wg, aux_dp, z_scale, d,
                            temperature, norm);
  }
  void router_stats(RoutingPlan& plan, const A* probs, const A* logits) override {
    fill_router_stats<A>(plan, probs, logits);
  }
  void build_plan(RoutingPlan& plan, const A* probs, double cf, DropPolicy policy) override {
    moe::build_plan<A>(plan, probs, cf, policy);
  }
  void copy_expert_counts_to_host(i64* host, const RoutingPlan& plan) override {
    copy_plan_stats_to_host(host, plan);
  }
  void permute(T* xg, const T* x, const RoutingPlan& plan, i64 H) override { dispatch_gather<T>(xg, x, plan, H); }
  void unpermute(T* dx, const T* dxg, const RoutingPlan& plan, i64 H) override {
    std::fill(dx, dx + plan.T * H, T(0));
    dispatch_scatter_add<T>(dx, dxg, plan, H);
  }
  void pair_keys(i64* keys, const RoutingPlan& plan, uint32_t stream) override {
    MT_CHECK(plan.T * plan.K <= (i64(1) << 32), "pair ids need 32 bits, T·K = ", plan.T * plan.K);
    for (i64 r = 0; r < plan.P; ++r) keys[r] = moe_math::pair_key(stream, plan.row_pair[r]);
  }
  void combine_forward(T* out, const T* y, const A* topk_w, const RoutingPlan& plan, i64 H) override {
    moe::combine_forward<T>(out, y, topk_w, plan, H);
  }
  void combine_backward(T* dy, A* dtopk_w, const T* dout, const T* y, const A* topk_w, const RoutingPlan& plan,
                        i64 H) override {
    moe::combine_backward<T>(dy, dtopk_w, dout, y, topk_w, plan, H);
  }
  // contract: C4.expert
  void grouped_mlp_forward(T* y, ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                           const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) override {
    for (const RowBlock& b : blocks) {
      const i64 n = b.rows, off = b.row, j = b.expert;
      if (n == 0) continue;
      if (w.w3[j] == w.w1[j] + I * H) {
        // [w1;w3] stacked: gate and up as one GEMM of width 2I (each element the same dot product as apart; OpenBLAS
        // may order it by the call's shape, so equal to a few ulps, not always bitwise).
        T* ab = ws(n * 2 * I);
        gemm_ref<T>(ab, x + off * H, w.w1[j], n, 2 * I, H, Trans::No, Trans::Yes, H, H, 2 * I, T(1), T(0));
        for (i64 r = 0; r < n; ++r) {
          std::copy(ab + r * 2 * I, ab + r * 2 * I + I, acts.a + (off + r) * I);
          std::copy(ab + r * 2 * I + I, ab + (r + 1) * 2 * I, acts.b + (off + r) * I);
        }
      } else {
        linear_forward_ref<T>(acts.a + off * I, x + off * H, w.w1[j], n, H, I);
        linear_forward_ref<T>(acts.b + off * I, x + off * H, w.w3[j], n, H, I);
      }
      swiglu_forward_ref<T>(acts.hact + off * I, acts.a + off * I, acts.b + off * I, n * I);
      if (drop.keys) apply_dropout<T>(acts.hact, drop, off, n, I);
      linear_forward_ref<T>(y + off * H, acts.hact + off * I, w.w2[j], n, I, H);
    }
  }
  void grouped_mlp_backward(T* dx, ExpertGrads<T>& g, T* dh, T* da, T* db, const T* dy, const ExpertMlpActs<T>& acts,
                            const T* x, const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                            const ExpertWeights<T>& w, i64 H, i64 I) override {
    for (const RowBlock& b : blocks) {
      const i64 n = b.rows, off = b.row, j = b.expert;
      if (n == 0) continue;
      linear_backward_ref<T>(dh + off * I, g.w2[j], dy + off * H, acts.hact + off * I, w.w2[j], n, I, H);
      if (drop.keys) apply_dropout<T>(dh, drop, off, n, I);
      swiglu_backward_ref<T>(da + off * I, db + off * I, dh + off * I, acts.a + off * I, acts.b + off * I, n * I);
      if (w.w3[j] == w.w1[j] + I * H && g.w3[j] == g.w1[j] + I * H) {
        // dx = da·W1 + db·W3 as two GEMMs (the order of today's sum); d[w1;w3] += [da db]ᵀ·x as one.
        linear_backward_ref<T>(dx + off * H, nullptr, da + off * I, x + off * H, w.w1[j], n, H, I);
        linear_backward_ref<T>(dx + off * H, nullptr, db + off * I, x + off * H, w.w3[j], n, H, I, T(1));
        T* dab = ws(n * 2 * I);
        for (i64 r = 0; r < n; ++r) {
          std::copy(da + (off + r) * I, da + (off + r + 1) * I, dab + r * 2 * I);
          std::copy(db + (off + r) * I, db + (off + r + 1) * I, dab + r * 2 * I + I);
        }
        gemm_ref<T>(g.w1[j], dab, x + off * H, 2 * I, H, n, Trans::Yes, Trans::No, 2 * I, H, H, T(1), T(1));
      } else {
        linear_backward_ref<T>(dx + off * H, g.w1[j], da + off * I, x + off * H, w.w1[j], n, H, I);
        linear_backward_ref<T>(dx + off * H, g.w3[j], db + off * I, x + off * H, w.w3[j], n, H, I, T(1));
      }
    }
  }
  void reserve_workspace(i64 Tn, i64 H, i64 I, i64 R) override {
    (void)Tn;
    (void)H;
    if (i64(ws_.size()) < R * 2 * I) ws_.resize(size_t(R * 2 * I));
  }
  void add_router_grad(T* dx, const T* dxr, const A* noise, i64 n) override {
    add_router_grad_impl(dx, dxr, noise, n);
  }

 private:
  // Workspace for the stacked gate/up GEMM: [R, 2I], sized by reserve_workspace before step 0.
  std::vector<T> ws_;
  T* ws(i64 n) {
    MT_CHECK(i64(ws_.size()) >= n, "MoE op workspace of ", ws_.size(), " elements, ", n, " needed (reserve_workspace)");
    return ws_.data();
  }
  void add_router_grad_impl(T* dx, const T* dxr, const A* noise, i64 n) {
    if (noise) {
      for (i64 i = 0; i < n; ++i) dx[i] += dxr[i] * noise[i];
    } else {
      for (i64 i = 0; i < n; ++i) dx[i] += dxr[i];
    }
  }
};

}  // namespace

template <typename T>
std::unique_ptr<MoeOps<T>> make_cpu_moe_ops() {
  return std::make_unique<CpuMoeOps<T>>();
}

template std::unique_ptr<MoeOps<float>> make_cpu_moe_ops<float>();
template std::unique_ptr<MoeOps<double>> make_cpu_moe_ops<double>();

}  // namespace moe
