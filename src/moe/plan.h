// Owns the routing plan (per-expert counts, kept mask, expert-grouped row order) built once per forward and reused by backward.
#pragma once
#include <vector>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

// Sizes are fixed at construction (T·K pairs); build_plan only fills. [C4.capacity]
struct RoutingPlan {
  i64 T = 0, E = 0, K = 0;
  std::vector<int> topk_idx;     // [T, K] selected expert per (token, slot), slots in descending score
  std::vector<uint8_t> kept;     // [T, K] 1 = pair survives capacity
  std::vector<i64> routed;       // [E] top-k assignments before dropping (expert_load)
  std::vector<i64> counts;       // [E] kept rows per expert
  std::vector<i64> offsets;      // [E+1] prefix sum of counts (stable, no atomics)
  std::vector<i64> row_pair;     // [T·K] rows 0..P-1 → pair t·K+k, grouped by expert, token order within
  std::vector<i64> pair_row;     // [T·K] pair → row, −1 when dropped
  i64 P = 0;                     // kept pairs
  i64 capacity = -1;             // C, −1 = dropless
  i64 dropped = 0;

  RoutingPlan() = default;
  RoutingPlan(i64 T_, i64 E_, i64 K_);
};

// C = ceil(capacity_factor · T · K / E) in double; −1 when capacity_factor == 0 (dropless). [C4.capacity]
i64 expert_capacity(double capacity_factor, i64 T, i64 K, i64 E);

// Fills `plan` from topk_idx (already in plan) and probs [T, E] (for drop_policy probs).
template <typename Tp>
void build_plan(RoutingPlan& plan, const Tp* probs, double capacity_factor, DropPolicy policy);

}  // namespace moe
