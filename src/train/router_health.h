// Owns the router-health metrics computed from expert_load (DESIGN §6): utilization, imbalance, entropy.
#pragma once
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

}  // namespace moe
