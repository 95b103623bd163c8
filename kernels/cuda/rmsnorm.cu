// Owns the CUDA RMSNorm forward/backward (twin: kernels/ref/rmsnorm_ref.cpp).
#include <cuda_runtime.h>

#include "kernels/kernels_cuda.h"

namespace moe {

// One block per row; block-wide sum of squares in fp32.
__global__ void rmsnorm_forward_kernel(float* y, float* rstd, const float* x, const float* w, int C, float eps) {
  const long row = blockIdx.x;
  const float* xr = x + row * C;
  __shared__ float partial[256];
  float ss = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  partial[threadIdx.x] = ss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const float r = rsqrtf(partial[0] / float(C) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) y[row * C + c] = w[c] * (xr[c] * r);
}

__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dy, const float* x, const float* w,
                                           const float* rstd, int C) {
  const long row = blockIdx.x;
  const float r = rstd[row];
  __shared__ float partial[256];
  float dot = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dot += dy[row * C + c] * w[c] * x[row * C + c] * r;
  partial[threadIdx.x] = dot;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const float m = partial[0] / float(C);
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    dx[row * C + c] = r * (dy[row * C + c] * w[c] - x[row * C + c] * r * m);
}

// One thread per column: a fixed-order sum over rows (deterministic).
__global__ void rmsnorm_backward_dw_kernel(float* dw, const float* dy, const float* x, const float* rstd, long N,
                                           int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (long n = 0; n < N; ++n) acc += dy[n * C + c] * x[n * C + c] * rstd[n];
  dw[c] += acc;
}

void rmsnorm_forward_cuda(float* y, float* rstd, const float* x, const float* w, i64 N, i64 C, double eps,
                          cudaStream_t stream) {
  if (N == 0) return;
  rmsnorm_forward_kernel<<<unsigned(N), 256, 0, stream>>>(y, rstd, x, w, int(C), float(eps));
}

void rmsnorm_backward_cuda(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                           i64 N, i64 C, cudaStream_t stream) {
  if (N == 0) return;
  rmsnorm_backward_dx_kernel<<<unsigned(N), 256, 0, stream>>>(dx, dy, x, w, rstd, int(C));
  rmsnorm_backward_dw_kernel<<<unsigned((C + 255) / 256), 256, 0, stream>>>(dw, dy, x, rstd, N, int(C));
}

}  // namespace moe
