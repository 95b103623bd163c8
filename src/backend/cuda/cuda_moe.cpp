// Owns the CUDA MoE op table (MoeOps<T>, T = bf16 or float): router via cuBLAS + one-thread-per-token kernels, the
// deterministic device plan, permute/combine kernels, grouped expert GEMMs; scratch sized once in reserve_workspace.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/grouped_gemm.h"
#include "core/error.h"
#include "kernels/cuda/moe_kernels.h"

namespace moe {

namespace {

// Router host arrays (bias [E] float, aux_dp [E] double) are staged into device buffers of this many experts.
constexpr i64 kMaxStagedExperts = 8192;

template <typename T>
class CudaMoeOps final : public MoeOps<T> {
 public:
  using A = float;
  static_assert(std::is_same<acc_t<T>, float>::value, "the CUDA MoE ops exist for float and bf16");
  static constexpr bool kBf16 = std::is_same<T, bf16>::value;

  explicit CudaMoeOps(CudaContext& ctx) : ctx_(ctx) {
    MT_CUDA(cudaSetDevice(ctx_.device));
    // Staging for the router's host arrays: [kMaxStagedExperts] floats then doubles (8-byte aligned).
    MT_CUDA(cudaMalloc(&stage_, size_t(kMaxStagedExperts) * (sizeof(float) + sizeof(double))));
    bias_dev_ = static_cast<float*>(stage_);
    aux_dev_ = reinterpret_cast<double*>(static_cast<char*>(stage_) + kMaxStagedExperts * sizeof(float));
  }
  ~CudaMoeOps() override {
    if (ctx_.stream) cudaStreamSynchronize(ctx_.stream);
    cudaFree(router_ws_);
    cudaFree(mlp_ws_);
    cudaFree(stage_);
  }
  CudaMoeOps(const CudaMoeOps&) = delete;
  CudaMoeOps& operator=(const CudaMoeOps&) = delete;

  void router_jitter(T* xr, A* noise, const T* x, i64 n, double eps, uint64_t seed, uint32_t step,
                     uint32_t stream) override {
    router_jitter_cuda<T>(xr, noise, x, n, eps, seed, step, stream, ctx_.stream);
  }

  // contract: C4.router B7 — fp32 logits from the (widened) input and the fp32 router weight.
  void router_forward(A* logits, A* probs, int* topk_idx, A* topk_w, const T* xr, const A* Wg, const float* bias,
                      const RouterDims& d, double temperature, TopkNorm norm) override {
    MT_CHECK(d.K >= 1 && d.K <= d.E, "router top-k needs 1 <= K <= E; K = ", d.K, ", E = ", d.E);
    if (d.T == 0) return;
    const float* xin = router_input(xr, d);
    // logits [T,E] = xin [T,H] · Wg [E,H]ᵀ in fp32.
    gemm_rowmajor(ctx_, logits, CUDA_R_32F, d.E, xin, CUDA_R_32F, GemmOp::N, d.H, Wg, CUDA_R_32F, GemmOp::T, d.H, d.T,
                  d.E, d.H, 1.f, 0.f);
    const float* bias_dev = nullptr;
    if (bias) {
      stage_check(d.E);
      MT_CUDA(cudaMemcpyAsync(bias_dev_, bias, size_t(d.E) * sizeof(float), cudaMemcpyHostToDevice, ctx_.stream));
      bias_dev = bias_dev_;
    }
    router_softmax_topk_cuda(probs, topk_idx, topk_w, logits, bias_dev, d.T, d.E, d.K, temperature, norm,
                             ctx_.stream);
  }

  void router_backward(T* dxr, A* dWg, A* dlogits, const A* dtopk_w, const A* logits, const A* probs,
                       const int* topk_idx, const A* topk_w, const T* xr, const A* Wg, const double* aux_dp,
                       double z_scale, const RouterDims& d, double temperature, TopkNorm norm) override {
    if (d.T == 0) return;
    const double* aux_dev = nullptr;
    if (aux_dp) {
      stage_check(d.E);
      MT_CUDA(cudaMemcpyAsync(aux_dev_, aux_dp, size_t(d.E) * sizeof(double), cudaMemcpyHostToDevice, ctx_.stream));
      aux_dev = aux_dev_;
    }
    router_backward_rows_cuda(dlogits, dtopk_w, logits, probs, topk_idx, topk_w, aux_dev, z_scale, d.T, d.E, d.K,
                              temperature, norm, ctx_.stream);
    const float* xin = router_input(xr, d);
    // dxr [T,H] = dlogits [T,E] · Wg [E,H] (fp32; bf16: rounded once); dWg [E,H] += dlogitsᵀ · xin.
    float* dxf = kBf16 ? router_ws_ + d.T * d.H : reinterpret_cast<float*>(dxr);
    gemm_rowmajor(ctx_, dxf, CUDA_R_32F, d.H, dlogits, CUDA_R_32F, GemmOp::N, d.E, Wg, CUDA_R_32F, GemmOp::N, d.H, d.T,
                  d.H, d.E, 1.f, 0.f);
    if constexpr (kBf16) narrow_bf16_cuda(reinterpret_cast<bf16*>(dxr), dxf, d.T * d.H, ctx_.stream);
    gemm_rowmajor(ctx_, dWg, CUDA_R_32F, d.H, dlogits, CUDA_R_32F, GemmOp::T, d.E, xin, CUDA_R_32F, GemmOp::N, d.H, d.E,
                  d.H, d.T, 1.f, 1.f);
  }

  void router_stats(RoutingPlan& plan, const A* probs, const A* logits) override {
    const PlanStatsLayout L = plan.layout();
    router_stats_cuda(reinterpret_cast<double*>(plan.stats.data() + L.prob_sum()),
                      reinterpret_cast<double*>(plan.stats.data() + L.lse_sq()),
                      reinterpret_cast<double*>(plan.stats.data() + L.logit_sq()), probs, logits, plan.T, plan.E,
                      ctx_.stream);
  }

  // contract: C4.capacity — the host fields capacity now, P and dropped when the statistics block comes back.
  void build_plan(RoutingPlan& plan, const A* probs, double cf, DropPolicy policy) override {
    plan.bind_views();
    plan.capacity = expert_capacity(cf, plan.T, plan.K, plan.E);
    plan.P = plan.dropped = -1;  // on the device until copy_expert_counts_to_host
    PlanArrays a{plan.topk_idx.data(), plan.kept.data(), plan.stats.data(), plan.offsets.data(),
                 plan.row_pair.data(), plan.pair_row.data(), plan.T, plan.E, plan.K};
    build_plan_cuda(a, probs, plan.capacity, policy, ctx_.stream);
    last_plan_ = &plan;
  }

  // contract: THE device→host copy of a layer's forward (one cudaMemcpyAsync + one stream synchronize).
  void copy_expert_counts_to_host(i64* host, const RoutingPlan& plan) override {
    const PlanStatsLayout L = plan.layout();
    MT_CUDA(cudaMemcpyAsync(host, plan.stats.data(), size_t(L.bytes()), cudaMemcpyDeviceToHost, ctx_.stream));
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));
    if (last_plan_ == &plan) {  // the plan built last, reachable without a cast: fill its host fields
      last_plan_->dropped = host[L.dropped()];
      last_plan_->P = plan.T * plan.K - last_plan_->dropped;
    }
  }

  void permute(T* xg, const T* x, const RoutingPlan& plan, i64 H) override {
    permute_cuda<T>(xg, x, plan.row_pair.data(), plan.offsets.data() + plan.E, plan.T * plan.K, plan.K, H,
                    ctx_.stream);
  }
  void unpermute(T* dx, const T* dxg, const RoutingPlan& plan, i64 H) override {
    unpermute_cuda<T>(dx, dxg, plan.pair_row.data(), plan.T, plan.K, H, ctx_.stream);
  }
  void pair_keys(i64* keys, const RoutingPlan& plan, uint32_t stream) override {
    pair_keys_cuda(keys, plan.row_pair.data(), plan.offsets.data() + plan.E, plan.T * plan.K, stream, ctx_.stream);
  }
  void combine_forward(T* out, const T* y, const A* topk_w, const RoutingPlan& plan, i64 H) override {
    combine_forward_cuda<T>(out, y, topk_w, plan.pair_row.data(), plan.T, plan.K, H, ctx_.stream);
  }
  void combine_backward(T* dy, A* dtopk_w, const T* dout, const T* y, const A* topk_w, const RoutingPlan& plan,
                        i64 H) override {
    combine_backward_cuda<T>(dy, dtopk_w, dout, y, topk_w, plan.pair_row.data(), plan.T, plan.K, H, ctx_.stream);
  }

  // Router: bf16 needs the widened input and its fp32 gradient, [T,H] each. Experts: one fp32 scratch of
  // max(R·2I (gate|up), R·(I + H) (dh, and dx before rounding)) floats. Grown only here, before step 0.
  void reserve_workspace(i64 Tn, i64 H, i64 I, i64 R) override {
    const i64 router = kBf16 ? 2 * Tn * H : 0;
    const i64 mlp = std::max(2 * R * I, R * (I + H));
    grow(&router_ws_, &router_floats_, router);
    grow(&mlp_ws_, &mlp_floats_, mlp);
  }

  void grouped_mlp_forward(T* y, ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                           const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) override {
    grouped_mlp_forward_cuda<T>(ctx_, y, acts, x, blocks, drop, w, H, I, mlp_ws_, mlp_floats_);
  }
  void grouped_mlp_backward(T* dx, ExpertGrads<T>& g, T* /*dh: fp32 in the workspace*/, T* da, T* db, const T* dy,
                            const ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                            const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) override {
    grouped_mlp_backward_cuda<T>(ctx_, dx, g, da, db, dy, acts, x, blocks, drop, w, H, I, mlp_ws_, mlp_floats_);
  }

  void add_router_grad(T* dx, const T* dxr, const A* noise, i64 n) override {
    add_router_grad_cuda<T>(dx, dxr, noise, n, ctx_.stream);
  }

 private:
  CudaContext& ctx_;
  void* stage_ = nullptr;
  float* bias_dev_ = nullptr;   // [kMaxStagedExperts]
  double* aux_dev_ = nullptr;   // [kMaxStagedExperts]
  float* router_ws_ = nullptr;  // bf16: [T,H] widened xr | [T,H] dxr in fp32
  i64 router_floats_ = 0;
  float* mlp_ws_ = nullptr;
  i64 mlp_floats_ = 0;
  RoutingPlan* last_plan_ = nullptr;  // the plan of the last build_plan (its host fields P, dropped come later)

  void grow(float** buf, i64* have, i64 need) {
    if (need <= *have) return;
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));
    MT_CUDA(cudaFree(*buf));
    *buf = nullptr;
    *have = 0;
    const cudaError_t e = cudaMalloc(reinterpret_cast<void**>(buf), size_t(need) * sizeof(float));
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      MT_INPUT_FAIL("out of GPU memory on ", ctx_.name, " (GPU ", ctx_.device, "): the MoE op workspace needs ",
                    need * i64(sizeof(float)), " bytes (", cudaGetErrorString(e),
                    "); lower train.micro_batch or train.seq_len, or moe.capacity_factor / moe.dropless_buffer_factor");
    }
    *have = need;
  }
  void stage_check(i64 E) const {
    MT_CHECK(E <= kMaxStagedExperts, "the CUDA router stages at most ", kMaxStagedExperts, " experts; E = ", E);
  }
  // The router's fp32 input [T,H]: xr itself (float) or xr widened into the workspace (bf16, exact).
  const float* router_input(const T* xr, const RouterDims& d) {
    if constexpr (kBf16) {
      MT_CHECK(2 * d.T * d.H <= router_floats_, "router workspace of ", router_floats_, " floats, ", 2 * d.T * d.H,
               " needed (reserve_workspace)");
      widen_bf16_cuda(router_ws_, reinterpret_cast<const bf16*>(xr), d.T * d.H, ctx_.stream);
      return router_ws_;
    } else {
      return reinterpret_cast<const float*>(xr);
    }
  }
};

}  // namespace

template <typename T>
std::unique_ptr<MoeOps<T>> make_cuda_moe_ops(CudaContext& ctx) {
  return std::make_unique<CudaMoeOps<T>>(ctx);
}
template std::unique_ptr<MoeOps<float>> make_cuda_moe_ops<float>(CudaContext&);
template std::unique_ptr<MoeOps<bf16>> make_cuda_moe_ops<bf16>(CudaContext&);

}  // namespace moe
