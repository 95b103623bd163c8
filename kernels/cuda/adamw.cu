// Owns the CUDA optimizer kernels: multi-tensor AdamW, Σg² in double, gradient scaling, bf16 rounding of the
// master (twins: src/optim/adamw.cpp, src/backend/cpu/cpu_optim.cpp; per-element math in kernels/math/adamw.h).
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/optim_kernels.h"

namespace moe {

namespace {
constexpr int kThreads = 256;
// Grid of a grid-stride elementwise launch over n > 0 elements.
unsigned grid_for(i64 n) { return unsigned(std::min<i64>((n + kThreads - 1) / kThreads, i64(1) << 20)); }

__global__ void adamw_chunks_kernel(const AdamWChunk* __restrict__ chunks, AdamWStep c, float gs) {
  const AdamWChunk ch = chunks[blockIdx.x];
  const float decay = ch.decay ? c.decay : c.nodecay;
  for (i64 i = threadIdx.x; i < ch.n; i += blockDim.x) {
    float p = ch.p[i], m = ch.m[i], v = ch.v[i];
    adamw_element(p, ch.g[i], m, v, decay, gs, c);
    ch.p[i] = p;
    ch.m[i] = m;
    ch.v[i] = v;
  }
}

// Thread t is lane t % kSqLanes of block t / kSqLanes; the lanes of a block are kSqLanes adjacent threads of one
// warp, combined by an xor butterfly whose lane-0 result is exactly sq_lanes_combine (IEEE addition commutes).
__global__ void grad_sq_partials_kernel(double* __restrict__ part, const float* __restrict__ g, i64 n, i64 nb) {
  static_assert(kSqLanes == 8, "the butterfly below combines 8 lanes");
  const i64 t = i64(blockIdx.x) * blockDim.x + threadIdx.x;
  const i64 b = t / kSqLanes;
  const int u = int(t % kSqLanes);
  double acc = 0.0;
  if (b < nb) {
    const i64 end = std::min(n, (b + 1) * kSqBlock);
    for (i64 i = b * kSqBlock + u; i < end; i += kSqLanes) acc = sq_lane_add(acc, g[i]);
  }
  // Every thread of the warp takes part in the shuffles (blocks past nb contribute nothing and write nothing).
  acc = rn::add(acc, __shfl_xor_sync(0xffffffffu, acc, 1));
  acc = rn::add(acc, __shfl_xor_sync(0xffffffffu, acc, 2));
  acc = rn::add(acc, __shfl_xor_sync(0xffffffffu, acc, 4));
  if (u == 0 && b < nb) part[b] = acc;
}

// One block: tiles of partials staged in shared memory, added by thread 0 in block order from 0.
__global__ void grad_sq_final_kernel(double* out, const double* __restrict__ part, i64 nb) {
  __shared__ double tile[kThreads];
  double s = 0.0;
  for (i64 base = 0; base < nb; base += kThreads) {
    const i64 k = base + threadIdx.x;
    tile[threadIdx.x] = k < nb ? part[k] : 0.0;
    __syncthreads();
    if (threadIdx.x == 0) {
      const int m = int(std::min<i64>(kThreads, nb - base));
      for (int j = 0; j < m; ++j) s = rn::add(s, tile[j]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = s;
}

__global__ void scale_kernel(float* x, i64 n, float coef) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x)
    x[i] = scale_element(x[i], coef);
}

__global__ void accumulate_kernel(float* __restrict__ dst, const float* __restrict__ src, i64 n) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x)
    dst[i] = __fadd_rn(dst[i], src[i]);
}

__global__ void round_to_bf16_kernel(bf16* __restrict__ dst, const float* __restrict__ src, i64 n) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x)
    dst[i] = bf16(src[i]);
}
}  // namespace

void adamw_chunks_cuda(const AdamWChunk* chunks, i64 nchunks, const AdamWStep& c, float gs, cudaStream_t stream) {
  if (nchunks <= 0) return;
  MT_CHECK(nchunks < (i64(1) << 31), "AdamW chunk table of ", nchunks, " entries exceeds one grid");
  adamw_chunks_kernel<<<unsigned(nchunks), kThreads, 0, stream>>>(chunks, c, gs);
  MT_CUDA_LAUNCH("adamw_chunks_kernel");
}

void grad_sq_sum_cuda(double* out, const float* g, i64 n, double* scratch, cudaStream_t stream) {
  if (n <= 0) {
    MT_CUDA(cudaMemsetAsync(out, 0, sizeof(double), stream));
    return;
  }
  const i64 nb = (n + kSqBlock - 1) / kSqBlock;
  const i64 threads = nb * kSqLanes;
  const i64 grid = (threads + kThreads - 1) / kThreads;
  MT_CHECK(grid < (i64(1) << 31), "grad_sq_sum over ", n, " elements exceeds one grid");
  grad_sq_partials_kernel<<<unsigned(grid), kThreads, 0, stream>>>(scratch, g, n, nb);
  MT_CUDA_LAUNCH("grad_sq_partials_kernel");
  grad_sq_final_kernel<<<1, kThreads, 0, stream>>>(out, scratch, nb);
  MT_CUDA_LAUNCH("grad_sq_final_kernel");
}

void scale_cuda(float* x, i64 n, float coef, cudaStream_t stream) {
  if (n <= 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, coef);
  MT_CUDA_LAUNCH("scale_kernel");
}

void accumulate_cuda(float* dst, const float* src, i64 n, cudaStream_t stream) {
  if (n <= 0) return;
  accumulate_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst, src, n);
  MT_CUDA_LAUNCH("accumulate_kernel");
}

void round_to_bf16_cuda(bf16* dst, const float* src, i64 n, cudaStream_t stream) {
  if (n <= 0) return;
  round_to_bf16_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst, src, n);
  MT_CUDA_LAUNCH("round_to_bf16_kernel");
}

}  // namespace moe
