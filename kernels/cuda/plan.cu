// Owns the CUDA routing plan: moe/plan.cpp's two stable counting sorts by expert with capacity, as per-expert block
// scans over the pairs in order (integer ballots, no atomics: deterministic and equal to the CPU plan) [C4.capacity].
#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/moe_kernels.h"
#include "moe/plan.h"

namespace moe {

namespace {

constexpr int kThreads = 256;  // a multiple of 32: block_rank works in whole warps
constexpr int kWarps = kThreads / 32;

// Exclusive rank of this thread's flag among the flags of the block (thread order) and, in *total, their count.
// Every thread of the block must call it (it synchronizes).
__device__ int block_rank(bool flag, int* total, int* warp_sums) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_sums[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < kWarps; ++w) {
    before += w < int(warp) ? warp_sums[w] : 0;
    sum += warp_sums[w];
  }
  __syncthreads();  // warp_sums is rewritten by the next call
  *total = sum;
  return before + in_warp;
}

// Block e: routed[e] = #{pairs with topk_idx = e}.
__global__ void routed_kernel(i64* routed, const int* idx, i64 TK) {
  __shared__ int warp_sums[kWarps];
  const int e = int(blockIdx.x);
  i64 count = 0;
  for (i64 base = 0; base < TK; base += kThreads) {
    const i64 i = base + threadIdx.x;
    int tile = 0;
    block_rank(i < TK && idx[i] == e, &tile, warp_sums);
    count += tile;
  }
  if (threadIdx.x == 0) routed[e] = count;
}

// One thread: start[0] = 0, start[e+1] = start[e] + n[e] (E is small: the serial scan is the stable one).
__global__ void scan_kernel(i64* start, const i64* n, i64 E) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  start[0] = 0;
  for (i64 e = 0; e < E; ++e) start[e + 1] = start[e] + n[e];
}

// Block e: bucket[start[e] + j] = the j-th pair (in pair order) with topk_idx = e.
__global__ void bucket_kernel(i64* bucket, const i64* start, const int* idx, i64 TK) {
  __shared__ int warp_sums[kWarps];
  const int e = int(blockIdx.x);
  i64 running = start[e];
  for (i64 base = 0; base < TK; base += kThreads) {
    const i64 i = base + threadIdx.x;
    const bool mine = i < TK && idx[i] == e;
    int tile = 0;
    const int rank = block_rank(mine, &tile, warp_sums);
    if (mine) bucket[running + rank] = i;
    running += tile;
  }
}

// Block e: kept[pair] for every pair of expert e, counts[e] = kept rows. Over capacity C: Position keeps the first C
// of the bucket (token order); Probs keeps the C with the highest prob, ties to the earlier token: the pair at
// bucket position j is kept when #{m : p_m > p_j or (p_m = p_j and m < j)} < C (its place in a stable sort by prob
// descending). The bucket's probs are staged through shared memory a tile at a time.
__global__ void capacity_kernel(uint8_t* kept, i64* counts, const i64* bucket, const i64* start, const i64* routed,
                                const float* probs, i64 K, i64 E, i64 C, DropPolicy policy) {
  __shared__ float tile[kThreads];
  const i64 e = blockIdx.x;
  const i64 n = routed[e];
  const i64* b = bucket + start[e];
  const bool over = C >= 0 && n > C;
  if (threadIdx.x == 0) counts[e] = over ? C : n;
  if (!over || policy == DropPolicy::Position) {
    for (i64 j = threadIdx.x; j < n; j += kThreads) kept[b[j]] = uint8_t(!over || j < C);
    return;
  }
  // Probs (block-uniform branch: every thread runs the same loop counts and reaches each __syncthreads).
  for (i64 j0 = 0; j0 < n; j0 += kThreads) {
    const i64 j = j0 + threadIdx.x;
    const bool valid = j < n;
    const float pj = valid ? probs[(b[j] / K) * E + e] : 0.f;
    i64 rank = 0;
    for (i64 m0 = 0; m0 < n; m0 += kThreads) {
      const i64 m = m0 + threadIdx.x;
      tile[threadIdx.x] = m < n ? probs[(b[m] / K) * E + e] : 0.f;
      __syncthreads();
      const i64 lim = n - m0 < kThreads ? n - m0 : kThreads;
      if (valid)
        for (i64 u = 0; u < lim; ++u) {
          const float pm = tile[u];
          rank += (pm > pj || (pm == pj && m0 + u < j)) ? 1 : 0;
        }
      __syncthreads();
    }
    if (valid) kept[b[j]] = uint8_t(rank < C);
  }
}

// One thread: offsets over the kept counts, dropped = T·K − P into the statistics block.
__global__ void offsets_kernel(i64* offsets, i64* dropped, const i64* counts, i64 E, i64 TK) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  offsets[0] = 0;
  for (i64 e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  *dropped = TK - offsets[E];
}

// Block e: the kept pairs of expert e in pair (= token) order take rows offsets[e] + 0, 1, …; its dropped pairs −1.
__global__ void rows_kernel(i64* row_pair, i64* pair_row, const i64* offsets, const int* idx, const uint8_t* kept,
                            i64 TK) {
  __shared__ int warp_sums[kWarps];
  const int e = int(blockIdx.x);
  i64 running = offsets[e];
  for (i64 base = 0; base < TK; base += kThreads) {
    const i64 i = base + threadIdx.x;
    const bool ours = i < TK && idx[i] == e;
    const bool keep = ours && kept[i] != 0;
    int tile = 0;
    const int rank = block_rank(keep, &tile, warp_sums);
    if (keep) {
      row_pair[running + rank] = i;
      pair_row[i] = running + rank;
    } else if (ours) {
      pair_row[i] = -1;
    }
    running += tile;
  }
}

}  // namespace

// contract: C4.capacity
void build_plan_cuda(const PlanArrays& p, const float* probs, i64 capacity, DropPolicy policy, cudaStream_t stream) {
  const i64 TK = p.T * p.K, E = p.E;
  if (E <= 0) return;
  MT_CHECK(E <= (i64(1) << 31) - 1, "build_plan_cuda: E = ", E, " does not fit a grid");
  const PlanStatsLayout L{E};
  i64* routed = p.stats + L.routed();
  i64* counts = p.stats + L.counts();
  // Pass 1: every pair bucketed by expert in pair order (row_pair is the bucket, offsets its starts).
  routed_kernel<<<unsigned(E), kThreads, 0, stream>>>(routed, p.topk_idx, TK);
  MT_CUDA_LAUNCH("plan routed");
  scan_kernel<<<1, 1, 0, stream>>>(p.offsets, routed, E);
  MT_CUDA_LAUNCH("plan scan");
  bucket_kernel<<<unsigned(E), kThreads, 0, stream>>>(p.row_pair, p.offsets, p.topk_idx, TK);
  MT_CUDA_LAUNCH("plan bucket");
  capacity_kernel<<<unsigned(E), kThreads, 0, stream>>>(p.kept, counts, p.row_pair, p.offsets, routed, probs, p.K, E,
                                                        capacity, policy);
  MT_CUDA_LAUNCH("plan capacity");
  // Pass 2: kept pairs grouped by expert, token order within.
  offsets_kernel<<<1, 1, 0, stream>>>(p.offsets, p.stats + L.dropped(), counts, E, TK);
  MT_CUDA_LAUNCH("plan offsets");
  rows_kernel<<<unsigned(E), kThreads, 0, stream>>>(p.row_pair, p.pair_row, p.offsets, p.topk_idx, p.kept, TK);
  MT_CUDA_LAUNCH("plan rows");
}

}  // namespace moe
