// Owns the CUDA SwiGLU forward/backward (twin: kernels/ref/swiglu_ref.cpp).
#include <cuda_runtime.h>

#include "kernels/kernels_cuda.h"

namespace moe {

__global__ void swiglu_forward_kernel(float* h, const float* a, const float* b, long N) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const float s = 1.f / (1.f + expf(-a[i]));
  h[i] = a[i] * s * b[i];
}

__global__ void swiglu_backward_kernel(float* da, float* db, const float* dh, const float* a, const float* b, long N) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const float s = 1.f / (1.f + expf(-a[i]));
  db[i] = dh[i] * a[i] * s;
  da[i] = dh[i] * b[i] * (s + a[i] * s * (1.f - s));
}

void swiglu_forward_cuda(float* h, const float* a, const float* b, i64 N, cudaStream_t stream) {
  if (N == 0) return;
  swiglu_forward_kernel<<<unsigned((N + 255) / 256), 256, 0, stream>>>(h, a, b, N);
}

void swiglu_backward_cuda(float* da, float* db, const float* dh, const float* a, const float* b, i64 N,
                          cudaStream_t stream) {
  if (N == 0) return;
  swiglu_backward_kernel<<<unsigned((N + 255) / 256), 256, 0, stream>>>(da, db, dh, a, b, N);
}

}  // namespace moe
