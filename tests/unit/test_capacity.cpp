// Owns the Capacity.* tests: build_plan (src/moe/plan.h) against a brute-force reference written from DESIGN C4.capacity.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "moe/plan.h"

namespace moe {
namespace {

// What DESIGN [C4.capacity] says the plan must be, computed the slow, obvious way.
struct RefPlan {
  i64 capacity = -1;
  std::vector<uint8_t> kept;    // [T·K]
  std::vector<i64> routed;      // [E]
  std::vector<i64> counts;      // [E]
  std::vector<i64> rows;        // kept pairs, expert-major, token order within an expert
  i64 dropped = 0;
  bool tie_decided = false;     // some kept and some dropped pair of one expert had equal probs
};

template <typename Tp>
RefPlan reference_plan(const std::vector<int>& topk, const std::vector<Tp>& probs, i64 T, i64 E, i64 K, double cf,
                       DropPolicy policy) {
  RefPlan r;
  // C = ceil(capacity_factor · T · k / E), in double, then ceil; capacity_factor 0 = dropless.
  r.capacity = cf == 0.0 ? -1 : i64(std::ceil(cf * double(T) * double(K) / double(E)));
  r.kept.assign(T * K, 0);
  r.routed.assign(E, 0);
  r.counts.assign(E, 0);
  for (i64 e = 0; e < E; ++e) {
    // The pairs routed to e, in flat token order.
    std::vector<i64> pairs;
    for (i64 t = 0; t < T; ++t)
      for (i64 k = 0; k < K; ++k)
        if (topk[t * K + k] == e) pairs.push_back(t * K + k);
    r.routed[e] = i64(pairs.size());
    std::vector<i64> keep = pairs;
    if (r.capacity >= 0 && i64(pairs.size()) > r.capacity) {
      keep.clear();
      if (policy == DropPolicy::Position) {
        keep.assign(pairs.begin(), pairs.begin() + r.capacity);  // the earliest tokens
      } else {
        // The C pairs with the highest probs[t, e]; a pair loses to another if its prob is lower, or equal
        // with a later token. Kept = the pairs that fewer than C others beat.
        for (i64 a : pairs) {
          i64 beaten_by = 0;
          for (i64 b : pairs) {
            const Tp pa = probs[(a / K) * E + e], pb = probs[(b / K) * E + e];
            if (pb > pa || (pb == pa && b / K < a / K)) ++beaten_by;
          }
          if (beaten_by < r.capacity) keep.push_back(a);
        }
      }
    }
    for (i64 p : keep) r.kept[p] = 1;
    if (policy == DropPolicy::Probs)
      for (i64 a : pairs)
        for (i64 b : pairs)
          if (r.kept[a] && !r.kept[b] && probs[(a / K) * E + e] == probs[(b / K) * E + e]) r.tie_decided = true;
    r.counts[e] = i64(keep.size());
    std::sort(keep.begin(), keep.end());  // token order within the expert
    r.rows.insert(r.rows.end(), keep.begin(), keep.end());
  }
  r.dropped = T * K - i64(r.rows.size());
  return r;
}

// Random probs [T, E] (quantised to `levels` values when > 0, so ties are common) and their top-k
// (ties → lower index, slots in descending prob), as the router makes them.
template <typename Tp>
void random_routing(std::vector<Tp>& probs, std::vector<int>& topk, i64 T, i64 E, i64 K, int levels,
                    std::mt19937_64& g) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  probs.resize(T * E);
  topk.resize(T * K);
  for (i64 t = 0; t < T; ++t) {
    double s = 0;
    std::vector<double> row(E);
    for (double& x : row) {
      x = levels > 0 ? double(1 + g() % levels) : u(g);
      // Skew toward low expert ids so some experts overflow and others starve.
      s += x;
    }
    if (t % 3 == 0) row[0] += s;
    for (i64 e = 0; e < E; ++e) probs[t * E + e] = Tp(levels > 0 ? row[e] / 8.0 : row[e]);
    std::vector<int> order(E);
    for (i64 e = 0; e < E; ++e) order[e] = int(e);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return probs[t * E + a] > probs[t * E + b]; });
    for (i64 k = 0; k < K; ++k) topk[t * K + k] = order[k];
  }
}

struct Coverage {
  int cases = 0, dropping = 0, tie_decided = 0;
};

template <typename Tp>
void check_case(Coverage& cov, i64 T, i64 E, i64 K, double cf, DropPolicy policy, int levels, uint64_t seed) {
  SCOPED_TRACE("T=" + std::to_string(T) + " E=" + std::to_string(E) + " K=" + std::to_string(K) +
               " cf=" + std::to_string(cf) + (policy == DropPolicy::Probs ? " probs" : " position") +
               " levels=" + std::to_string(levels) + " seed=" + std::to_string(seed));
  std::mt19937_64 g(seed);
  std::vector<Tp> probs;
  std::vector<int> topk;
  random_routing(probs, topk, T, E, K, levels, g);
  RoutingPlan plan(T, E, K);
  plan.topk_idx = topk;
  // Stale contents must not leak into the result: the plan object is reused every forward.
  std::fill(plan.kept.begin(), plan.kept.end(), uint8_t(1));
  std::fill(plan.pair_row.begin(), plan.pair_row.end(), i64(12345));
  build_plan<Tp>(plan, probs.data(), cf, policy);
  const RefPlan ref = reference_plan(topk, probs, T, E, K, cf, policy);
  cov.cases++;
  cov.dropping += ref.dropped > 0;
  cov.tie_decided += ref.tie_decided;

  ASSERT_EQ(plan.capacity, ref.capacity);
  EXPECT_EQ(plan.capacity, expert_capacity(cf, T, K, E));
  EXPECT_EQ(plan.topk_idx, topk) << "build_plan must not touch topk_idx";
  EXPECT_EQ(plan.routed, ref.routed);
  EXPECT_EQ(plan.kept, ref.kept);
  EXPECT_EQ(plan.counts, ref.counts);
  EXPECT_EQ(plan.dropped, ref.dropped);
  EXPECT_EQ(plan.P, T * K - ref.dropped);
  ASSERT_EQ(i64(plan.offsets.size()), E + 1);
  EXPECT_EQ(plan.offsets[0], 0);
  for (i64 e = 0; e < E; ++e) EXPECT_EQ(plan.offsets[e + 1], plan.offsets[e] + ref.counts[e]);
  // Expert-grouped rows, token order within each expert.
  ASSERT_EQ(plan.P, i64(ref.rows.size()));
  for (i64 r = 0; r < plan.P; ++r) EXPECT_EQ(plan.row_pair[r], ref.rows[r]) << "row " << r;
  // pair_row and row_pair are inverse; dropped pairs have no row.
  for (i64 r = 0; r < plan.P; ++r) EXPECT_EQ(plan.pair_row[plan.row_pair[r]], r);
  for (i64 i = 0; i < T * K; ++i) {
    if (plan.kept[i]) {
      ASSERT_GE(plan.pair_row[i], 0);
      ASSERT_LT(plan.pair_row[i], plan.P);
      EXPECT_EQ(plan.row_pair[plan.pair_row[i]], i);
      EXPECT_EQ(topk[i], std::upper_bound(plan.offsets.begin(), plan.offsets.end(), plan.pair_row[i]) -
                             plan.offsets.begin() - 1)
          << "row of pair " << i << " lies in the block of another expert";
    } else {
      EXPECT_EQ(plan.pair_row[i], -1) << "dropped pair " << i;
    }
  }
  // Every expert holds at most C rows.
  if (ref.capacity >= 0) {
    for (i64 e = 0; e < E; ++e) EXPECT_LE(plan.counts[e], ref.capacity);
  }
}

const double kFactors[] = {0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 2.0, 4.0};

TEST(Capacity, C4_capacity_probs_policy_matches_reference) {
  Coverage cov;
  uint64_t seed = 1;
  for (const i64 T : {1, 5, 16, 37})
    for (const i64 E : {1, 4, 7})
      for (const i64 K : {1, 2, 3})
        if (K <= E)
          for (const double cf : kFactors)
            for (const int levels : {0, 3}) {
              check_case<float>(cov, T, E, K, cf, DropPolicy::Probs, levels, seed++);
              check_case<double>(cov, T, E, K, cf, DropPolicy::Probs, levels, seed++);
            }
  // The sweep must exercise dropping and ties decided by token order, not just the easy cases.
  EXPECT_GT(cov.dropping, cov.cases / 3);
  EXPECT_GT(cov.tie_decided, 20);
  std::printf("[ probs ] %d cases, %d drop pairs, %d have a tie decided by token order\n", cov.cases, cov.dropping,
              cov.tie_decided);
}

TEST(Capacity, C4_capacity_position_policy_matches_reference) {
  Coverage cov;
  uint64_t seed = 1000;
  for (const i64 T : {1, 5, 16, 37})
    for (const i64 E : {1, 4, 7})
      for (const i64 K : {1, 2, 3})
        if (K <= E)
          for (const double cf : kFactors)
            for (const int levels : {0, 3}) check_case<float>(cov, T, E, K, cf, DropPolicy::Position, levels, seed++);
  EXPECT_GT(cov.dropping, cov.cases / 3);
}

TEST(Capacity, C4_capacity_ties_go_to_earlier_token) {
  // Every token picks expert 0 with the same prob: probs keeps the first C tokens, like position.
  const i64 T = 6, E = 3, K = 1;
  RoutingPlan plan(T, E, K);
  std::vector<float> probs(T * E, 0.25f);
  for (i64 t = 0; t < T; ++t) probs[t * E] = 0.5f;
  std::fill(plan.topk_idx.begin(), plan.topk_idx.end(), 0);
  build_plan<float>(plan, probs.data(), 1.0, DropPolicy::Probs);  // C = ceil(6/3) = 2
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_EQ(plan.kept, (std::vector<uint8_t>{1, 1, 0, 0, 0, 0}));
  // A higher prob later in the batch wins over earlier ties; the remaining slot goes to the earliest tie.
  probs[4 * E] = 0.6f;
  build_plan<float>(plan, probs.data(), 1.0, DropPolicy::Probs);
  EXPECT_EQ(plan.kept, (std::vector<uint8_t>{1, 0, 0, 0, 1, 0}));
  EXPECT_EQ(plan.row_pair[0], 0);
  EXPECT_EQ(plan.row_pair[1], 4);
  // Position ignores probs.
  build_plan<float>(plan, probs.data(), 1.0, DropPolicy::Position);
  EXPECT_EQ(plan.kept, (std::vector<uint8_t>{1, 1, 0, 0, 0, 0}));
}

TEST(Capacity, C4_capacity_formula) {
  EXPECT_EQ(expert_capacity(0.0, 100, 2, 8), -1);                        // dropless
  EXPECT_EQ(expert_capacity(1.0, 100, 2, 8), 25);                        // exact
  EXPECT_EQ(expert_capacity(1.25, 10, 2, 8), 4);                         // ceil(3.125)
  EXPECT_EQ(expert_capacity(0.01, 3, 1, 64), 1);                         // never 0 for a positive factor
  // Computed in double, then ceil (no rounding guard): 1.1·25·2/5 is 11.000000000000002 in double → 12.
  EXPECT_EQ(expert_capacity(1.1, 25, 2, 5), 12);
  EXPECT_EQ(expert_capacity(1.1, 25, 2, 5), i64(std::ceil(1.1 * 25.0 * 2.0 / 5.0)));
}

TEST(Capacity, C4_capacity_dropless_keeps_all) {
  std::mt19937_64 g(7);
  const i64 T = 50, E = 8, K = 2;
  std::vector<double> probs;
  std::vector<int> topk;
  random_routing(probs, topk, T, E, K, 0, g);
  RoutingPlan plan(T, E, K);
  plan.topk_idx = topk;
  build_plan<double>(plan, probs.data(), 0.0, DropPolicy::Probs);
  EXPECT_EQ(plan.dropped, 0);
  EXPECT_EQ(plan.P, T * K);
  EXPECT_EQ(plan.counts, plan.routed);
  EXPECT_EQ(plan.capacity, -1);
}

}  // namespace
}  // namespace moe
