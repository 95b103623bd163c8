// Owns the router: fp32 logits, tempered softmax, top-k selection (with optional balancing bias), combine weights [C4.router].
#pragma once
#include "core/dims.h"

namespace moe {

struct RouterDims {
  i64 T, H, E, K;
};

enum class TopkNorm { Renormalize, Raw };  // norm_topk_prob (Mixtral: always Renormalize)

// logits [T,E] = xr [T,H] · Wg[E,H]ᵀ ; probs [T,E] = softmax(logits / temperature);
// topk_idx [T,K] = top-k of probs + bias (bias [E] may be null; ties → lower index; slots in descending score);
// topk_w [T,K] = probs at the selection, divided by their sum when Renormalize.
template <typename T>
void router_forward(T* logits, T* probs, int* topk_idx, T* topk_w, const T* xr, const T* Wg, const float* bias,
                    const RouterDims& d, double temperature, TopkNorm norm);

// Backward of the router given dLoss/dtopk_w [T,K] (zero for dropped pairs), a per-expert gradient on probs
// added to every token (aux loss: aux_dp [E]), and dLoss/dz_layer (z_scale) for z = mean_t lse(logits)².
// dxr [T,H] overwritten; dWg [E,H] accumulated. `dlogits` [T,E] is scratch.
template <typename T>
void router_backward(T* dxr, T* dWg, T* dlogits, const T* dtopk_w, const T* logits, const T* probs,
                     const int* topk_idx, const T* topk_w, const T* xr, const T* Wg, const double* aux_dp,
                     double z_scale, const RouterDims& d, double temperature, TopkNorm norm);

// Σ_t logsumexp(logits_t)² (before temperature) [C4.zloss].
template <typename T>
double router_lse_sq_sum(const T* logits, i64 T_, i64 E);

}  // namespace moe
