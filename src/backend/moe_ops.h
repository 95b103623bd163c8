// Owns the MoE half of the backend op table: router softmax/top-k, routing plan, permute/unpermute, combine, grouped expert MLPs, router statistics.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.h"
#include "core/bf16.h"
#include "core/dims.h"
#include "moe/experts.h"
#include "moe/plan.h"
#include "moe/router.h"

namespace moe {

// Expert dropout regenerated where the rows are (forward and backward alike), never stored or sent:
// row r of the expert buffer carries key[r] = (Philox stream of its source micro-batch << 32) | pair t·K+k, and
// its mask is 0 with probability p, else 1/(1−p), drawn from Philox(seed, ExpertDropout) at
// counter pair·I + i, step, stream — the same draws wherever the row is computed. keys == null: no dropout.
struct ExpertDropout {
  const i64* keys = nullptr;  // [R]
  double p = 0;
  uint64_t seed = 0;
  uint32_t step = 0;
};

// MoE ops over storage type T; A = acc_t<T> holds router logits, probabilities, combine weights and their
// gradients (fp32 for bf16, contract B7). Pointers live in the backend's memory space; a RoutingPlan's arrays too.
// Shapes use core/dims.h letters: T tokens, H hidden, E experts, K top-k, I expert width, R rows at the experts.
template <typename T>
class MoeOps {
 public:
  using A = acc_t<T>;
  virtual ~MoeOps() = default;

  // Router jitter: noise[n] (A) = U(1−ε, 1+ε) from Philox(seed, RouterJitter) at (i, step, stream);
  // xr = x · noise (rounded to T).
  virtual void router_jitter(T* xr, A* noise, const T* x, i64 n, double eps, uint64_t seed, uint32_t step,
                             uint32_t stream) = 0;
  // logits, probs [T,E], topk_idx, topk_w [T,K]: see moe/router.h router_forward. The router weight Wg [E,H] is
  // A (fp32 under bf16, DESIGN §8): logits = xr · Wgᵀ in A. [C4.router]
  virtual void router_forward(A* logits, A* probs, int* topk_idx, A* topk_w, const T* xr, const A* Wg,
                              const float* bias, const RouterDims& d, double temperature, TopkNorm norm) = 0;
  // See moe/router.h router_backward: dxr [T,H] overwritten, dWg [E,H] accumulated, dlogits scratch.
  virtual void router_backward(T* dxr, A* dWg, A* dlogits, const A* dtopk_w, const A* logits, const A* probs,
                               const int* topk_idx, const A* topk_w, const T* xr, const A* Wg, const double* aux_dp,
                               double z_scale, const RouterDims& d, double temperature, TopkNorm norm) = 0;
  // The router statistics of the plan's stats block: prob_sum [E] = Σ_t probs[t,e], lse_sq = Σ_t lse(logits_t)².
  virtual void router_stats(RoutingPlan& plan, const A* probs, const A* logits) = 0;

  // Deterministic stable counting sort of the pairs by expert, capacity applied (moe/plan.h build_plan).
  virtual void build_plan(RoutingPlan& plan, const A* probs, double capacity_factor, DropPolicy policy) = 0;
  // THE device→host copy of a layer's forward: the plan's statistics block (counts, routed, dropped, prob_sum,
  // lse_sq; PlanStatsLayout) into host [words]. A device backend makes its one cudaMemcpyAsync + sync here.
  virtual void copy_expert_counts_to_host(i64* host, const RoutingPlan& plan) = 0;

  // Permute (dispatch gather): xg [P,H] = rows of x [T,H] in plan order.
  virtual void permute(T* xg, const T* x, const RoutingPlan& plan, i64 H) = 0;
  // Unpermute (dispatch backward): dx [T,H] = Σ over the kept pairs of token t of dxg rows (token order).
  virtual void unpermute(T* dx, const T* dxg, const RoutingPlan& plan, i64 H) = 0;
  // pair keys [P] in plan order for expert dropout: (stream << 32) | row_pair[r].
  virtual void pair_keys(i64* keys, const RoutingPlan& plan, uint32_t stream) = 0;

  // out [T,H] = Σ_k kept w[t,k] · y[row(t,k)], accumulated in A, rounded once. [C4.combine]
  virtual void combine_forward(T* out, const T* y, const A* topk_w, const RoutingPlan& plan, i64 H) = 0;
  // dy [P,H] = w · dout_t ; dtopk_w [T,K] = dout_t · y_row (0 for dropped pairs).
  virtual void combine_backward(T* dy, A* dtopk_w, const T* dout, const T* y, const A* topk_w,
                                const RoutingPlan& plan, i64 H) = 0;

  // Sizes the ops' own scratch for layers of Tn tokens, width H, expert width I and at most R expert rows, once
  // before step 0 (a table serving several layers keeps the largest). Ops never allocate after this.
  virtual void reserve_workspace(i64 Tn, i64 H, i64 I, i64 R) = 0;

  // All local experts in one grouped call: y [R,H] = W2_j (silu(W1_j x) ⊙ W3_j x ⊙ mask) for every row block
  // (expert j); acts a, b, hact [R,I] saved. Gate and up run as one GEMM per block when w3_j == w1_j + I·H
  // ([w1;w3] stacked), else as two. [C4.expert]
  virtual void grouped_mlp_forward(T* y, ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                                   const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) = 0;
  // dx [R,H] overwritten for the rows of the blocks; weight gradients accumulated block by block in list order;
  // dh, da, db [R,I] scratch. The dropout mask is regenerated from drop.keys.
  virtual void grouped_mlp_backward(T* dx, ExpertGrads<T>& g, T* dh, T* da, T* db, const T* dy,
                                    const ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                                    const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) = 0;

  // dx[n] += dxr[n] (· noise[n] when noise is non-null): the router's input gradient into the layer's.
  virtual void add_router_grad(T* dx, const T* dxr, const A* noise, i64 n) = 0;
};

// The CPU implementation: today's kernels of src/moe, OpenMP loops (src/backend/cpu/cpu_moe.cpp, float and double);
// bf16 per DESIGN §8 with the oneDNN bf16 GEMMs of kernels/ref/gemm_ref.h (src/backend/cpu/cpu_moe_bf16.cpp).
template <typename T>
std::unique_ptr<MoeOps<T>> make_cpu_moe_ops();
template <>
std::unique_ptr<MoeOps<bf16>> make_cpu_moe_ops<bf16>();

}  // namespace moe
