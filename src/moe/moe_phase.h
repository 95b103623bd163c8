// Owns the names of the phases of one MoE layer (forward and backward) that moe-bench times and the cost model fits.
#pragma once

namespace moe {

// The phases in execution order. Forward: route (router GEMM, softmax, top-k, jitter), plan (capacity, counting
// sort, router statistics, the device→host statistics copy, the counts all-to-all), permute (rows of x in plan
// order), dispatch_a2a (rows to the ranks of their experts), experts (grouped SwiGLU MLPs), combine_a2a (expert
// outputs back), unpermute (weighted sum per token). Backward runs them in reverse: unpermute_bwd (combine
// backward: dy rows and dtopk_w), combine_a2a_bwd (dy rows to the experts), experts_bwd, dispatch_a2a_bwd (dx rows
// back), permute_bwd (sum of dx rows per token), route_bwd (router backward incl. aux/z, added into dx).
// At ep = 1 the two all-to-alls of each direction are no-ops (the rows are read in place) and time ~0.
enum class MoePhase : int {
  Route,
  Plan,
  Permute,
  DispatchA2A,
  Experts,
  CombineA2A,
  Unpermute,
  UnpermuteBwd,
  CombineA2ABwd,
  ExpertsBwd,
  DispatchA2ABwd,
  PermuteBwd,
  RouteBwd,
  kCount
};
constexpr int kMoePhases = int(MoePhase::kCount);
constexpr int kMoeForwardPhases = int(MoePhase::UnpermuteBwd);  // phases [0, kMoeForwardPhases) are the forward

// snake_case names, used as CSV/JSON column stems ("<name>_ms") and timer labels.
constexpr const char* kMoePhaseName[kMoePhases] = {
    "route",       "plan",           "permute",     "dispatch_a2a",    "experts",          "combine_a2a", "unpermute",
    "unpermute_bwd", "combine_a2a_bwd", "experts_bwd", "dispatch_a2a_bwd", "permute_bwd", "route_bwd"};

inline const char* phase_name(MoePhase p) { return kMoePhaseName[int(p)]; }

// Communication phases (all-to-all of token rows); the rest is compute or local memory traffic.
constexpr bool is_a2a_phase(MoePhase p) {
  return p == MoePhase::DispatchA2A || p == MoePhase::CombineA2A || p == MoePhase::CombineA2ABwd ||
         p == MoePhase::DispatchA2ABwd;
}

}  // namespace moe
