// Owns the raw-pointer launchers of the CUDA MoE kernels (router, plan, permute, combine, expert SwiGLU + dropout);
// each does the arithmetic of kernels/math/{router,moe}.h for its rows/elements. Pointers are device memory unless
// said otherwise; every launcher queues on `stream`, checks its launch and never synchronizes. A = float.
#pragma once
#include <cstdint>

#include "config/config.h"  // DropPolicy
#include "core/bf16.h"
#include "core/dims.h"
#include "moe/router.h"  // TopkNorm

typedef struct CUstream_st* cudaStream_t;

namespace moe {

// ---- kernels/cuda/router.cu ----
// noise [n] = jitter_factor(Philox(seed, RouterJitter).uniform(i, step, stream_id), eps) (fp32); xr = x · noise.
template <typename T>
void router_jitter_cuda(T* xr, float* noise, const T* x, i64 n, double eps, uint64_t seed, uint32_t step,
                        uint32_t stream_id, cudaStream_t stream);
// dst [n] fp32 = src [n] bf16 (exact); dst [n] bf16 = round(src [n] fp32).
void widen_bf16_cuda(float* dst, const bf16* src, i64 n, cudaStream_t stream);
void narrow_bf16_cuda(bf16* dst, const float* src, i64 n, cudaStream_t stream);
// One thread per token: probs [T,E], topk_idx/topk_w [T,K] from logits [T,E] (router_softmax_row, router_topk_row,
// router_topk_renormalize); bias [E] device or null.
void router_softmax_topk_cuda(float* probs, int* topk_idx, float* topk_w, const float* logits, const float* bias,
                              i64 T, i64 E, i64 K, double temperature, TopkNorm norm, cudaStream_t stream);
// One thread per token: dlogits [T,E] (router_backward_row); aux_dp [E] device or null.
void router_backward_rows_cuda(float* dlogits, const float* dtopk_w, const float* logits, const float* probs,
                               const int* topk_idx, const float* topk_w, const double* aux_dp, double z_scale, i64 T,
                               i64 E, i64 K, double temperature, TopkNorm norm, cudaStream_t stream);
// prob_sum [E] = Σ_t probs[t,e], lse_sq [1] = Σ_t lse(logits_t)², logit_sq [1] = Σ_t Σ_e logits[t,e]², all double,
// fixed-order block reductions (256 strided partial sums, then a shared-memory tree): deterministic, equal to the
// serial CPU sum up to reordering.
void router_stats_cuda(double* prob_sum, double* lse_sq, double* logit_sq, const float* probs, const float* logits,
                       i64 T, i64 E, cudaStream_t stream);

// ---- kernels/cuda/plan.cu ----
// The device arrays of a RoutingPlan (moe/plan.h); stats is the PlanStatsLayout block (counts, routed, dropped).
struct PlanArrays {
  const int* topk_idx;  // [T·K]
  uint8_t* kept;        // [T·K]
  i64* stats;           // [3E + 2]
  i64* offsets;         // [E+1]
  i64* row_pair;        // [T·K]
  i64* pair_row;        // [T·K]
  i64 T, E, K;
};
// build_plan of moe/plan.cpp on the device, the same arrays bit for bit (row_pair beyond P excepted): routed counts,
// a stable bucket of the pairs per expert (token order), capacity C (−1 dropless) by position or by prob (rank among
// the expert's pairs by prob descending, ties to the earlier token), kept counts, offsets, rows in token order.
// Every step is a per-expert block scan over the pairs in order: no atomics, deterministic. probs [T,E].
void build_plan_cuda(const PlanArrays& p, const float* probs, i64 capacity, DropPolicy policy, cudaStream_t stream);

// ---- kernels/cuda/permute.cu ----
// P is read on the device from *P_dev (= offsets[E]); TK bounds the rows.
// xg [P,H] = x[row_pair[r] / K] rows.
template <typename T>
void permute_cuda(T* xg, const T* x, const i64* row_pair, const i64* P_dev, i64 TK, i64 K, i64 H, cudaStream_t stream);
// dx [T,H] = round(unpermute_elem) : Σ over the kept slots of each token (slot order), fp32 accumulation.
template <typename T>
void unpermute_cuda(T* dx, const T* dxg, const i64* pair_row, i64 T_, i64 K, i64 H, cudaStream_t stream);
// keys [P] = pair_key(stream_id, row_pair[r]).
void pair_keys_cuda(i64* keys, const i64* row_pair, const i64* P_dev, i64 TK, uint32_t stream_id, cudaStream_t stream);

// ---- kernels/cuda/combine.cu ----
// out [T,H] = round(combine_elem): bit for bit the CPU bf16 table (fp32, no FMA, slot order).
template <typename T>
void combine_forward_cuda(T* out, const T* y, const float* topk_w, const i64* pair_row, i64 T_, i64 K, i64 H,
                          cudaStream_t stream);
// One warp per pair: dy [row,H] = round(w · dout_t); dtopk_w = dout_t · y_row in the warp order of
// moe_math::warp_order_dot (0 for dropped pairs, whose dy rows do not exist).
template <typename T>
void combine_backward_cuda(T* dy, float* dtopk_w, const T* dout, const T* y, const float* topk_w, const i64* pair_row,
                           i64 T_, i64 K, i64 H, cudaStream_t stream);
// dx [n] = round(dx + dxr · noise) (noise may be null: dx + dxr), fp32, no FMA.
template <typename T>
void add_router_grad_cuda(T* dx, const T* dxr, const float* noise, i64 n, cudaStream_t stream);

// ---- kernels/cuda/expert_dropout.cu ----
// The expert-dropout draw (backend/moe_ops.h ExpertDropout) for rows whose keys start at `keys` (null: no dropout).
struct DropoutArgs {
  const i64* keys;  // [rows] device, already offset to the block's first row
  double p;
  float keep;       // 1/(1−p)
  uint64_t seed;
  uint32_t step;
};
// For `rows` rows: a, b [rows,I] = round(ab [rows,2I] halves) (gate | up, fp32 from the GEMM); h [rows,I] =
// round(expert_swiglu(a, b, mask)) from the rounded a, b.
template <typename T>
void expert_swiglu_forward_cuda(T* a, T* b, T* h, const float* ab, i64 rows, i64 I, const DropoutArgs& drop,
                                cudaStream_t stream);
// dh [rows,I] fp32 (from the GEMM) · mask; da, db [rows,I] = round(expert_swiglu_backward(dh, a, b)).
template <typename T>
void expert_swiglu_backward_cuda(T* da, T* db, const float* dh, const T* a, const T* b, i64 rows, i64 I,
                                 const DropoutArgs& drop, cudaStream_t stream);

}  // namespace moe
