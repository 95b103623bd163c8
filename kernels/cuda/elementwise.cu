// Owns the CUDA residual add and scale (twins: CpuDenseOps::add, scale; arithmetic: kernels/math/elementwise.h).
#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/math/elementwise.h"

namespace moe {

using namespace cuda_detail;

template <typename T>
__global__ void add_kernel(T* y, const T* a, const T* b, i64 n) {
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x)
    y[e] = math::add_round<T>(a[e], b[e]);
}

template <typename T>
void add_cuda(T* y, const T* a, const T* b, i64 n, cudaStream_t s) {
  if (n <= 0) return;
  add_kernel<T><<<grid_for(n), kThreads, 0, s>>>(y, a, b, n);
  MT_CUDA_LAUNCH("add");
}

template void add_cuda<float>(float*, const float*, const float*, i64, cudaStream_t);
template void add_cuda<bf16>(bf16*, const bf16*, const bf16*, i64, cudaStream_t);

template <typename T>
__global__ void scale_kernel(T* y, const T* x, float s, i64 n) {
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x)
    y[e] = math::scale_round<T>(x[e], s);
}

template <typename T>
void scale_cuda(T* y, const T* x, float s, i64 n, cudaStream_t st) {
  if (n <= 0) return;
  scale_kernel<T><<<grid_for(n), kThreads, 0, st>>>(y, x, s, n);
  MT_CUDA_LAUNCH("scale");
}

template void scale_cuda<float>(float*, const float*, float, i64, cudaStream_t);
template void scale_cuda<bf16>(bf16*, const bf16*, float, i64, cudaStream_t);

}  // namespace moe
