// Owns the device helpers the dense CUDA kernels share: launch sizes, element loads as float, fixed-order block sums.
#pragma once
#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"
#include "core/bf16.h"
#include "core/dims.h"

namespace moe {
namespace cuda_detail {

constexpr int kThreads = 256;  // every block-per-row kernel: a power of two (the trees below rely on it)

// Blocks of kThreads for a grid-stride loop over n elements (at least 1, at most a few waves' worth).
inline unsigned grid_for(i64 n) {
  const i64 b = (n + kThreads - 1) / kThreads;
  return unsigned(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

template <typename T>
__device__ __forceinline__ float ld(const T* p) {
  return float(*p);
}

// Σ over the block of v (blockDim.x == kThreads) in a fixed tree; every thread gets the result. sh: kThreads slots.
// Ends with a barrier, so sh may be reused right after.
template <typename R>
__device__ R block_sum(R v, R* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] = sh[threadIdx.x] + sh[threadIdx.x + s];
    __syncthreads();
  }
  const R r = sh[0];
  __syncthreads();
  return r;
}

// Max over the block (same shape as block_sum).
__device__ inline float block_max(float v, float* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = sh[0];
  __syncthreads();
  return r;
}

// Σ over the warp by xor butterfly: every lane ends with the same bits (IEEE + is commutative).
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace cuda_detail
}  // namespace moe
