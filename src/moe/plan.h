// Owns the routing plan (per-expert counts, kept mask, expert-grouped row order) built once per forward and reused by backward.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.h"
#include "core/arena.h"
#include "core/dims.h"

namespace moe {

// n elements of U inside an arena (host memory on the CPU backend, device memory on a device backend). Sized once;
// never resized. Reads like a fixed-size vector for host code and tests (indexing, iteration, == a vector).
template <typename U>
struct ArenaArray {
  U* ptr = nullptr;
  i64 n = 0;
  void reserve(Arena& a, i64 count) {
    n = count;
    a.reserve(&ptr, count);
  }
  U* data() { return ptr; }
  const U* data() const { return ptr; }
  size_t size() const { return size_t(n); }
  U& operator[](i64 i) { return ptr[i]; }
  const U& operator[](i64 i) const { return ptr[i]; }
  U* begin() { return ptr; }
  U* end() { return ptr + n; }
  const U* begin() const { return ptr; }
  const U* end() const { return ptr + n; }
  // Host copies (tests, tools): from a vector of the same size, and back to a vector.
  ArenaArray& operator=(const std::vector<U>& v) {
    MT_CHECK(i64(v.size()) == n, "ArenaArray assign: ", v.size(), " elements into ", n);
    for (i64 i = 0; i < n; ++i) ptr[i] = v[size_t(i)];
    return *this;
  }
  operator std::vector<U>() const { return std::vector<U>(begin(), end()); }
  friend bool operator==(const ArenaArray& a, const std::vector<U>& v) {
    return a.size() == v.size() && std::equal(a.begin(), a.end(), v.begin());
  }
  friend bool operator==(const std::vector<U>& v, const ArenaArray& a) { return a == v; }
  friend bool operator==(const ArenaArray& a, const ArenaArray& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
  }
};

// The per-layer statistics block that comes back to the host once per forward (copy_expert_counts_to_host):
// counts [E] kept rows per expert | routed [E] top-k assignments before dropping | dropped | prob_sum [E] Σ_t p[t,e] |
// lse_sq_sum Σ_t lse(logits_t)² | logit_sq_sum Σ_t ‖logits_t‖² (router logit norm). 8-byte words: E·3 + 3 of them.
struct PlanStatsLayout {
  i64 E;
  i64 words() const { return 3 * E + 3; }
  i64 bytes() const { return 8 * words(); }
  i64 counts() const { return 0; }      // i64 [E]
  i64 routed() const { return E; }      // i64 [E]
  i64 dropped() const { return 2 * E; } // i64
  i64 prob_sum() const { return 2 * E + 1; }  // double [E]
  i64 lse_sq() const { return 3 * E + 1; }    // double
  i64 logit_sq() const { return 3 * E + 2; }  // double
};

// Sizes are fixed at construction (T·K pairs); build_plan only fills. All arrays live in one arena: the caller's
// (MoeLayer: the model's activation arena, so a device backend holds them in device memory) or, for tools and
// tests, a host arena the plan owns. [C4.capacity]
struct RoutingPlan {
  i64 T = 0, E = 0, K = 0;
  ArenaArray<int> topk_idx;     // [T, K] selected expert per (token, slot), slots in descending score
  ArenaArray<uint8_t> kept;     // [T, K] 1 = pair survives capacity
  ArenaArray<i64> stats;        // [PlanStatsLayout::words] the block copied to the host (counts, routed, ...)
  ArenaArray<i64> offsets;      // [E+1] prefix sum of counts (stable, no atomics)
  ArenaArray<i64> fill;         // [E+1] counting-sort cursors (scratch)
  ArenaArray<i64> row_pair;     // [T·K] rows 0..P-1 → pair t·K+k, grouped by expert, token order within
  ArenaArray<i64> pair_row;     // [T·K] pair → row, −1 when dropped
  ArenaArray<i64> counts;       // [E] view of stats: kept rows per expert
  ArenaArray<i64> routed;       // [E] view of stats: top-k assignments before dropping (expert_load)
  i64 P = 0;                    // kept pairs
  i64 capacity = -1;            // C, −1 = dropless
  i64 dropped = 0;

  RoutingPlan() = default;
  // Host plan owning its arena (tests, tools).
  RoutingPlan(i64 T_, i64 E_, i64 K_);
  // Reserved in `arena` (allocated later by its owner). Must not move once reserved.
  RoutingPlan(i64 T_, i64 E_, i64 K_, Arena& arena);
  RoutingPlan(RoutingPlan&&) = default;
  RoutingPlan& operator=(RoutingPlan&&) = default;

  PlanStatsLayout layout() const { return {E}; }
  // The views counts/routed point into `stats`; call after the arena is allocated.
  void bind_views();

 private:
  void reserve(Arena& a);
  std::unique_ptr<Arena> own_;
};

// C = ceil(capacity_factor · T · K / E) in double; −1 when capacity_factor == 0 (dropless). [C4.capacity]
i64 expert_capacity(double capacity_factor, i64 T, i64 K, i64 E);

// Fills `plan` from topk_idx (already in plan) and probs [T, E] (for drop_policy probs): two stable counting-sort
// passes by expert (all pairs, then kept pairs), token order within an expert.
template <typename Tp>
void build_plan(RoutingPlan& plan, const Tp* probs, double capacity_factor, DropPolicy policy);

}  // namespace moe
