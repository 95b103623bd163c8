// Owns capacity dropping and the expert-grouped row order: counting sort by expert, stable in token order.
#include "moe/plan.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moe {

RoutingPlan::RoutingPlan(i64 T_, i64 E_, i64 K_) : T(T_), E(E_), K(K_), own_(std::make_unique<Arena>()) {
  reserve(*own_);
  own_->allocate();
  bind_views();
}

RoutingPlan::RoutingPlan(i64 T_, i64 E_, i64 K_, Arena& arena) : T(T_), E(E_), K(K_) { reserve(arena); }

void RoutingPlan::reserve(Arena& a) {
  const i64 TK = T * K;
  topk_idx.reserve(a, TK);
  kept.reserve(a, TK);
  stats.reserve(a, layout().words());
  offsets.reserve(a, E + 1);
  fill.reserve(a, E + 1);
  row_pair.reserve(a, TK);
  pair_row.reserve(a, TK);
}

void RoutingPlan::bind_views() {
  counts.ptr = stats.ptr ? stats.ptr + layout().counts() : nullptr;
  counts.n = E;
  routed.ptr = stats.ptr ? stats.ptr + layout().routed() : nullptr;
  routed.n = E;
}

// contract: C4.capacity
i64 expert_capacity(double capacity_factor, i64 T, i64 K, i64 E) {
  if (capacity_factor <= 0.0) return -1;
  return i64(std::ceil(capacity_factor * double(T) * double(K) / double(E)));
}

// Stable sort of b[0, n) by `before` (strict weak order), bottom-up merge sort through tmp[0, n): the same result
// as std::stable_sort (a stable order is unique) without its temporary heap buffer.
template <typename Less>
static void stable_sort_with(i64* b, i64 n, i64* tmp, Less before) {
  i64* src = b;
  i64* dst = tmp;
  for (i64 width = 1; width < n; width *= 2) {
    for (i64 lo = 0; lo < n; lo += 2 * width) {
      const i64 mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
      i64 i = lo, j = mid, k = lo;
      while (i < mid && j < hi) dst[k++] = before(src[j], src[i]) ? src[j++] : src[i++];
      while (i < mid) dst[k++] = src[i++];
      while (j < hi) dst[k++] = src[j++];
    }
    std::swap(src, dst);
  }
  if (src != b) std::copy(src, src + n, b);
}

// contract: C4.capacity
template <typename Tp>
void build_plan(RoutingPlan& p, const Tp* probs, double capacity_factor, DropPolicy policy) {
  const i64 T = p.T, E = p.E, K = p.K, TK = T * K;
  p.bind_views();
  std::fill(p.routed.begin(), p.routed.end(), 0);
  for (i64 i = 0; i < TK; ++i) p.routed[p.topk_idx[i]]++;

  // Pass 1, counting sort of every pair by expert in token order (row_pair doubles as the bucket array,
  // offsets holds the bucket starts, fill the cursors).
  i64* bucket = p.row_pair.data();
  i64* start = p.offsets.data();
  start[0] = 0;
  for (i64 e = 0; e < E; ++e) start[e + 1] = start[e] + p.routed[e];
  std::copy(start, start + E, p.fill.data());
  for (i64 i = 0; i < TK; ++i) bucket[p.fill[p.topk_idx[i]]++] = i;

  p.capacity = expert_capacity(capacity_factor, T, K, E);
  std::fill(p.kept.begin(), p.kept.end(), uint8_t(0));
  for (i64 e = 0; e < E; ++e) {
    i64* b = bucket + start[e];
    const i64 n = p.routed[e];
    i64 keep = n;
    if (p.capacity >= 0 && n > p.capacity) {
      keep = p.capacity;
      if (policy == DropPolicy::Probs) {
        // Highest softmax prob first; stable sort keeps ties in token order (earlier token wins).
        // pair_row is free until pass 2: it is the merge buffer.
        stable_sort_with(b, n, p.pair_row.data(),
                         [&](i64 x, i64 y) { return probs[(x / K) * E + e] > probs[(y / K) * E + e]; });
      }  // Position: the bucket is already in flat token order b·L + t.
    }
    for (i64 j = 0; j < keep; ++j) p.kept[b[j]] = 1;
  }

  // Pass 2: kept rows grouped by expert, token order within (a second stable counting sort).
  std::fill(p.counts.begin(), p.counts.end(), 0);
  for (i64 i = 0; i < TK; ++i)
    if (p.kept[i]) p.counts[p.topk_idx[i]]++;
  p.offsets[0] = 0;
  for (i64 e = 0; e < E; ++e) p.offsets[e + 1] = p.offsets[e] + p.counts[e];
  p.P = p.offsets[E];
  p.dropped = TK - p.P;
  p.stats[p.layout().dropped()] = p.dropped;
  std::copy(p.offsets.begin(), p.offsets.end() - 1, p.fill.data());
  for (i64 i = 0; i < TK; ++i) {
    if (p.kept[i]) {
      const i64 row = p.fill[p.topk_idx[i]]++;
      p.row_pair[row] = i;
      p.pair_row[i] = row;
    } else {
      p.pair_row[i] = -1;
    }
  }
}

template void build_plan<float>(RoutingPlan&, const float*, double, DropPolicy);
template void build_plan<double>(RoutingPlan&, const double*, double, DropPolicy);

}  // namespace moe
