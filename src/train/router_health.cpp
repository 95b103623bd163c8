// Owns the arithmetic of the router-health fields of metrics.jsonl.
#include "train/router_health.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

RouterHealth layer_health(const std::vector<i64>& load) {
  RouterHealth h;
  const double E = double(load.size());
  if (load.empty()) return h;
  double total = 0, mx = 0;
  i64 used = 0;
  for (i64 c : load) {
    total += double(c);
    mx = std::max(mx, double(c));
    used += c > 0;
  }
  h.expert_utilization = double(used) / E;
  if (total <= 0) return h;
  h.load_imbalance = mx / (total / E);
  double ent = 0;
  for (i64 c : load)
    if (c > 0) {
      const double p = double(c) / total;
      ent -= p * std::log(p);
    }
  h.routing_entropy = E > 1 ? ent / std::log(E) : 0.0;
  return h;
}

RouterHealth router_health(const std::vector<std::vector<i64>>& load) {
  RouterHealth h;
  if (load.empty() || load[0].empty()) return h;
  i64 used = 0, cells = 0;
  double ent_sum = 0;
  for (const auto& layer : load) {
    const RouterHealth l = layer_health(layer);
    for (i64 c : layer) used += c > 0;
    cells += i64(layer.size());
    h.load_imbalance = std::max(h.load_imbalance, l.load_imbalance);
    ent_sum += l.routing_entropy;
  }
  h.expert_utilization = double(used) / double(cells);
  h.routing_entropy = ent_sum / double(load.size());
  return h;
}

i64 topk_changed_tokens(const int* prev, const int* cur, i64 T, i64 K) {
  i64 changed = 0;
  std::vector<int> a(static_cast<size_t>(K)), b(static_cast<size_t>(K));  // K ≤ E, a handful of ints; called at logged steps only
  for (i64 t = 0; t < T; ++t) {
    std::copy(prev + t * K, prev + (t + 1) * K, a.begin());
    std::copy(cur + t * K, cur + (t + 1) * K, b.begin());
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    changed += a != b;
  }
  return changed;
}

double topk_churn(const int* prev, const int* cur, i64 T, i64 K) {
  return T > 0 ? double(topk_changed_tokens(prev, cur, T, K)) / double(T) : 0.0;
}

std::vector<i64> RoutingChurn::observe(const std::vector<std::vector<int>>& topk, i64 K) {
  std::vector<i64> changed;
  if (!prev_.empty()) {
    MT_CHECK(prev_.size() == topk.size(), "routing churn: ", topk.size(), " layers after ", prev_.size());
    for (size_t l = 0; l < topk.size(); ++l) {
      MT_CHECK(prev_[l].size() == topk[l].size(), "routing churn: probe size changed");
      changed.push_back(topk_changed_tokens(prev_[l].data(), topk[l].data(), i64(topk[l].size()) / K, K));
    }
  }
  prev_ = topk;
  return changed;
}

}  // namespace moe
