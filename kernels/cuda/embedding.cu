// Owns the CUDA embedding lookup and its deterministic gradient (twin: CpuDenseOps embedding_forward/backward).
#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/math/elementwise.h"

namespace moe {

using namespace cuda_detail;

template <typename T>
__global__ void embedding_forward_kernel(T* x, const T* W, const int32_t* ids, i64 Tn, i64 H) {
  const i64 n = Tn * H;
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x) {
    const i64 t = e / H, h = e % H;
    x[e] = W[i64(ids[t]) * H + h];
  }
}

// Block t: if token t holds the first occurrence of its id, add the dx rows of every token with that id, in token
// order, into dW's row (thread h owns columns h, h + kThreads, ...): the CPU's per-element order, one writer per row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    embedding_backward_kernel(float* dW, const T* dx, const int32_t* ids, i64 Tn, i64 H, int32_t pad_id) {
  __shared__ int seen;
  __shared__ unsigned mask[kThreads / 32];
  const i64 t = blockIdx.x;
  const int32_t id = ids[t];
  if (id == pad_id) return;  // uniform over the block
  if (threadIdx.x == 0) seen = 0;
  __syncthreads();
  for (i64 u = threadIdx.x; u < t; u += kThreads)
    if (ids[u] == id) seen = 1;  // benign race: every writer stores 1
  __syncthreads();
  if (seen) return;  // uniform: an earlier token's block owns this row
  float* row = dW + i64(id) * H;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (i64 t0 = t; t0 < Tn; t0 += kThreads) {
    const i64 u = t0 + threadIdx.x;
    const unsigned m = __ballot_sync(0xffffffffu, u < Tn && ids[u] == id);
    if (lane == 0) mask[warp] = m;
    __syncthreads();
    for (int w = 0; w < kThreads / 32; ++w) {
      unsigned bits = mask[w];
      while (bits) {  // matching tokens of this chunk in increasing order
        const int b = __ffs(bits) - 1;
        bits &= bits - 1;
        const T* dr = dx + (t0 + w * 32 + b) * H;
        for (i64 h = threadIdx.x; h < H; h += kThreads) row[h] = math::embed_grad_add<T>(row[h], dr[h]);
      }
    }
    __syncthreads();  // mask is rewritten by the next chunk
  }
}

template <typename T>
void embedding_forward_cuda(T* x, const T* W, const int32_t* ids, i64 Tn, i64 H, cudaStream_t s) {
  const i64 n = Tn * H;
  if (n <= 0) return;
  embedding_forward_kernel<T><<<grid_for(n), kThreads, 0, s>>>(x, W, ids, Tn, H);
  MT_CUDA_LAUNCH("embedding_forward");
}

template <typename T>
void embedding_backward_cuda(float* dW, const T* dx, const int32_t* ids, i64 Tn, i64 H, int32_t pad_id,
                             cudaStream_t s) {
  if (Tn <= 0 || H <= 0) return;
  MT_CHECK(Tn < (i64(1) << 31), "embedding_backward_cuda: Tn ", Tn);
  embedding_backward_kernel<T><<<unsigned(Tn), kThreads, 0, s>>>(dW, dx, ids, Tn, H, pad_id);
  MT_CUDA_LAUNCH("embedding_backward");
}

template void embedding_forward_cuda<float>(float*, const float*, const int32_t*, i64, i64, cudaStream_t);
template void embedding_forward_cuda<bf16>(bf16*, const bf16*, const int32_t*, i64, i64, cudaStream_t);
template void embedding_backward_cuda<float>(float*, const float*, const int32_t*, i64, i64, int32_t, cudaStream_t);
template void embedding_backward_cuda<bf16>(float*, const bf16*, const int32_t*, i64, i64, int32_t, cudaStream_t);

}  // namespace moe
