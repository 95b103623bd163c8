// Owns the router-health metrics of metrics.jsonl (DESIGN §6): utilization, imbalance, entropy of expert_load, per
// model and per MoE layer, and routing churn on a fixed probe batch.
#pragma once
#include <cmath>
#include <limits>
#include <vector>

#include "core/dims.h"

namespace moe {

struct RouterHealth {
  double expert_utilization = 0;  // fraction of (layer, expert) pairs with load > 0
  double load_imbalance = 0;      // max over layers of max_e load / mean_e load
  double routing_entropy = 0;     // mean over layers of H(load / Σload) / log E
};

// load: [moe layer][E] routed (top-k) assignments before dropping, summed over the global batch.
RouterHealth router_health(const std::vector<std::vector<i64>>& load);

// The same three numbers for one layer's load [E]: utilization = share of experts with load > 0; imbalance =
// max_e load / mean_e load (0 for an empty load); entropy = H(load/Σload) / log E (0 when E = 1 or no load).
RouterHealth layer_health(const std::vector<i64>& load);

// Router health of one MoE layer at one logged step, over the global batch (metrics.jsonl "router_layers").
struct LayerRouterHealth {
  int layer = 0;               // decoder layer index (model.layers.<layer>)
  double utilization = 0;      // layer_health
  double imbalance = 0;
  double entropy = 0;
  double dropped_frac = 0;     // pairs dropped by capacity / all top-k pairs
  double aux = 0;              // the run's aux form (moe.aux_loss_form) on this layer alone, mean over micro-batches,
                               // before moe.aux_loss_coef [C4.aux]
  double z = 0;                // mean_t lse(logits_t)², mean over micro-batches, before moe.z_loss_coef [C4.zloss]
  double logit_norm = 0;       // router logit norm: sqrt(Σ_t ‖logits_t‖² / T) (RMS over tokens of the L2 norm)
  double churn = std::numeric_limits<double>::quiet_NaN();  // routing churn (RoutingChurn); NaN: not measured yet
};

// Share of tokens whose top-k expert SET changed between two routings of the same tokens: prev/cur [T, K] expert
// indices (slot order ignored). T = 0 → 0.
double topk_churn(const int* prev, const int* cur, i64 T, i64 K);
// The changed-token count behind topk_churn (what ranks sum before dividing by all tokens).
i64 topk_changed_tokens(const int* prev, const int* cur, i64 T, i64 K);

// Routing churn on a fixed probe batch: each logged step routes the same tokens (Mode::Eval) and compares the
// top-k sets per MoE layer with those of the previous logged step. The first observation (and the first after a
// resume: the previous routing is not checkpointed) has nothing to compare with.
class RoutingChurn {
 public:
  // topk: [moe layer][T·K] this rank's probe routing. Returns per layer the changed-token count against the
  // previous call (empty on the first call); remembers topk.
  std::vector<i64> observe(const std::vector<std::vector<int>>& topk, i64 K);
  bool primed() const { return !prev_.empty(); }

 private:
  std::vector<std::vector<int>> prev_;
};

}  // namespace moe
