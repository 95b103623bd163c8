// Owns the CUDA residual add, scale and LoRA dropout (twins: CpuDenseOps::add, scale, lora_dropout; arithmetic: kernels/math/elementwise.h).
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

template <typename T>
__global__ void lora_dropout_kernel(T* y, const T* x, i64 N, i64 C, double p, float keep, Philox ph, uint32_t step,
                                    uint32_t stream, const i64* keys, uint32_t tag) {
  const i64 n_el = N * C;
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n_el; e += i64(gridDim.x) * blockDim.x) {
    const i64 n = e / C, c = e - n * C;
    const uint64_t key = math::lora_dropout_key(keys, stream, n);
    y[e] = math::scale_round<T>(x[e], math::lora_dropout_factor<float>(ph, key, tag, c, C, step, p, keep));
  }
}

template <typename T>
void lora_dropout_cuda(T* y, const T* x, i64 N, i64 C, double p, uint64_t seed, uint32_t step, uint32_t stream,
                       const i64* keys, uint32_t tag, cudaStream_t st) {
  if (N <= 0 || C <= 0) return;
  lora_dropout_kernel<T><<<grid_for(N * C), kThreads, 0, st>>>(y, x, N, C, p, float(1.0 / (1.0 - p)),
                                                              Philox(seed, RngPurpose::LoraDropout), step, stream,
                                                              keys, tag);
  MT_CUDA_LAUNCH("lora_dropout");
}

template void lora_dropout_cuda<float>(float*, const float*, i64, i64, double, uint64_t, uint32_t, uint32_t,
                                       const i64*, uint32_t, cudaStream_t);
template void lora_dropout_cuda<bf16>(bf16*, const bf16*, i64, i64, double, uint64_t, uint32_t, uint32_t, const i64*,
                                      uint32_t, cudaStream_t);

}  // namespace moe
