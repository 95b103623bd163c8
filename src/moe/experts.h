// Owns the local MoE pieces around the experts: dispatch gather, the grouped expert MLPs, combine, and their backward [C4.expert, C4.combine].
#pragma once
#include <vector>

#include "core/bf16.h"
#include "core/dims.h"
#include "moe/plan.h"

namespace moe {

template <typename T>
struct ExpertWeights {
  std::vector<const T*> w1, w3, w2;  // per local expert: w1/w3 [I,H], w2 [H,I]
  // LoRA adapters per local expert (moe/lora_experts.h; empty vectors = none): gate_up A [r_gu,H], B [n·I,r_gu];
  // down A [r,I], B [H,r].
  std::vector<const T*> gu_a, gu_b, dn_a, dn_b;
};
template <typename T>
struct ExpertGrads {
  // Weight gradients in acc_t<T> (fp32 for bf16). Null entries: frozen base weights (LoRA/QLoRA), no gradient.
  std::vector<acc_t<T>*> w1, w3, w2;
  std::vector<acc_t<T>*> gu_a, gu_b, dn_a, dn_b;  // LoRA adapters (as ExpertWeights)
};

// Dispatch (local part): xg [P,H] = rows of x [T,H] in plan order (grouped by expert, token order within).
template <typename T>
void dispatch_gather(T* xg, const T* x, const RoutingPlan& plan, i64 H);

// Backward of dispatch: dx [T,H] += rows of dxg [P,H] scattered back to their tokens (token order, no atomics).
template <typename T>
void dispatch_scatter_add(T* dx, const T* dxg, const RoutingPlan& plan, i64 H);

// Combine: out [T,H] = Σ_k kept w[t,k] · y[row(t,k)] (y [P,H] in plan order). [C4.combine]
template <typename T>
void combine_forward(T* out, const T* y, const T* topk_w, const RoutingPlan& plan, i64 H);

// Backward of combine: dy [P,H] = w · dout_t ; dtopk_w [T,K] = dout_t · y_row (0 for dropped pairs).
template <typename T>
void combine_backward(T* dy, T* dtopk_w, const T* dout, const T* y, const T* topk_w, const RoutingPlan& plan, i64 H);

// Rows [row, row + rows) of a buffer that belong to local expert `expert` (one source rank's block).
struct RowBlock {
  i64 expert = 0;
  i64 row = 0;
  i64 rows = 0;
};

// Blocks of a buffer grouped contiguously by expert: counts[j] rows of expert j, in order.
std::vector<RowBlock> contiguous_blocks(const std::vector<i64>& counts);

// Saved activations of the expert MLPs over R rows grouped by local expert (counts[j] rows for expert j).
template <typename T>
struct ExpertMlpActs {
  T* a;     // [R, I] W1·x
  T* b;     // [R, I] W3·x
  T* hact;  // [R, I] silu(a)·b (· dropout mask)
};

// y [R,H] = W2_j (silu(W1_j x) ⊙ W3_j x) for the rows of every block (expert j); mask [R,I] may be null. [C4.expert]
// Rows are independent, so blocks may sit anywhere in the buffer (e.g. source-major after an all-to-all).
template <typename T>
void expert_mlp_forward(T* y, ExpertMlpActs<T>& acts, const T* x, const T* mask, const std::vector<RowBlock>& blocks,
                        const ExpertWeights<T>& w, i64 H, i64 I);
template <typename T>
void expert_mlp_forward(T* y, ExpertMlpActs<T>& acts, const T* x, const T* mask, const std::vector<i64>& counts,
                        const ExpertWeights<T>& w, i64 H, i64 I) {
  expert_mlp_forward<T>(y, acts, x, mask, contiguous_blocks(counts), w, H, I);
}

// dx [R,H] overwritten for the rows of the blocks; weight grads accumulated. dh/da/db [R,I] scratch.
// Weight gradients are summed block by block in list order: with blocks ordered expert-major, source-minor,
// the floating-point order equals one process running the micro-batches in turn.
template <typename T>
void expert_mlp_backward(T* dx, ExpertGrads<T>& g, T* dh, T* da, T* db, const T* dy, const ExpertMlpActs<T>& acts,
                         const T* x, const T* mask, const std::vector<RowBlock>& blocks, const ExpertWeights<T>& w,
                         i64 H, i64 I);
// Contiguous expert-major layout given as block sizes [E_local · S] (rows of expert j from source s).
template <typename T>
void expert_mlp_backward(T* dx, ExpertGrads<T>& g, T* dh, T* da, T* db, const T* dy, const ExpertMlpActs<T>& acts,
                         const T* x, const T* mask, const std::vector<i64>& block_sizes, const ExpertWeights<T>& w,
                         i64 H, i64 I) {
  const size_t S = block_sizes.size() / g.w1.size();
  std::vector<RowBlock> b;
  i64 row = 0;
  for (size_t i = 0; i < block_sizes.size(); ++i) {
    b.push_back({i64(i / S), row, block_sizes[i]});
    row += block_sizes[i];
  }
  expert_mlp_backward<T>(dx, g, dh, da, db, dy, acts, x, mask, b, w, H, I);
}

}  // namespace moe
