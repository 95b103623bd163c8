// Owns the arithmetic of the router-health fields of metrics.jsonl.
#include "train/router_health.h"

#include <cmath>

namespace moe {

RouterHealth router_health(const std::vector<std::vector<i64>>& load) {
  RouterHealth h;
  if (load.empty() || load[0].empty()) return h;
  i64 used = 0, cells = 0;
  double ent_sum = 0;
  for (const auto& layer : load) {
    const double E = double(layer.size());
    double total = 0, mx = 0;
    for (i64 c : layer) {
      total += double(c);
      mx = std::max(mx, double(c));
      used += c > 0;
      ++cells;
    }
    if (total > 0) h.load_imbalance = std::max(h.load_imbalance, mx / (total / E));
    double ent = 0;
    for (i64 c : layer)
      if (c > 0) {
        const double p = double(c) / total;
        ent -= p * std::log(p);
      }
    ent_sum += E > 1 ? ent / std::log(E) : 0.0;
  }
  h.expert_utilization = double(used) / double(cells);
  h.routing_entropy = ent_sum / double(load.size());
  return h;
}

}  // namespace moe
