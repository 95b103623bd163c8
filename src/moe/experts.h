// Owns the grouped expert MLPs over a routing plan: dispatch (gather), W2·(silu(W1x) ⊙ W3x), combine [C4.expert, C4.combine].
#pragma once
#include <vector>

#include "core/dims.h"
#include "moe/plan.h"

namespace moe {

template <typename T>
struct ExpertWeights {
  std::vector<const T*> w1, w3, w2;  // per expert: w1/w3 [I,H], w2 [H,I]
};
template <typename T>
struct ExpertGrads {
  std::vector<T*> w1, w3, w2;
};

// Saved activations of one layer's experts, rows in plan order (P ≤ T·K).
template <typename T>
struct ExpertActs {
  T* xg;    // [T·K, H] gathered inputs
  T* a;     // [T·K, I] W1·x
  T* b;     // [T·K, I] W3·x
  T* hact;  // [T·K, I] silu(a)·b (· dropout mask)
  T* y;     // [T·K, H] expert outputs (unweighted)
  T* mask;  // [T·K, I] inverted-dropout scale (0 or 1/(1−p)); null when expert_dropout == 0
};

// Scratch shared by all layers for backward.
template <typename T>
struct ExpertScratch {
  T* dy;   // [T·K, H]
  T* dh;   // [T·K, I]
  T* da;   // [T·K, I]
  T* db;   // [T·K, I]
  T* dxg;  // [T·K, H]
};

// out [T,H] = Σ over kept pairs of w · expert(x). topk_w [T,K].
template <typename T>
void experts_forward(T* out, ExpertActs<T>& acts, const T* x, const T* topk_w, const RoutingPlan& plan,
                     const ExpertWeights<T>& w, i64 H, i64 I);

// dx [T,H] accumulated (+=); dtopk_w [T,K] overwritten (0 for dropped pairs); weight grads accumulated.
template <typename T>
void experts_backward(T* dx, T* dtopk_w, ExpertGrads<T>& g, ExpertScratch<T>& s, const T* dout,
                      const ExpertActs<T>& acts, const T* topk_w, const RoutingPlan& plan,
                      const ExpertWeights<T>& w, i64 H, i64 I);

}  // namespace moe
