// Owns the CPU MoE op pieces the fp32/fp64 and bf16 tables share: the router statistics block of the plan and its host copy.
#pragma once
#include <algorithm>

#include "backend/moe_ops.h"

namespace moe {

// Σ_t probs[t, e], Σ_t lse(logits_t)² and Σ_t Σ_e logits[t, e]² (double) into the plan's statistics block;
// probs/logits [T, E] in A.
template <typename A>
inline void fill_router_stats(RoutingPlan& plan, const A* probs, const A* logits) {
  const PlanStatsLayout L = plan.layout();
  const i64 E = plan.E;
  double* ps = reinterpret_cast<double*>(plan.stats.data() + L.prob_sum());
  std::fill(ps, ps + E, 0.0);
  for (i64 t = 0; t < plan.T; ++t)
    for (i64 e = 0; e < E; ++e) ps[e] += double(probs[t * E + e]);
  *reinterpret_cast<double*>(plan.stats.data() + L.lse_sq()) = router_lse_sq_sum<A>(logits, plan.T, E);
  double sq = 0;
  for (i64 i = 0; i < plan.T * E; ++i) sq += double(logits[i]) * double(logits[i]);
  *reinterpret_cast<double*>(plan.stats.data() + L.logit_sq()) = sq;
}

// contract: one device→host copy of the counts (and router statistics) per layer forward; a memcpy on the CPU.
inline void copy_plan_stats_to_host(i64* host, const RoutingPlan& plan) {
  std::copy(plan.stats.begin(), plan.stats.end(), host);
}

}  // namespace moe
