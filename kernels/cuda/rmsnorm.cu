// Owns the CUDA RMSNorm forward/backward (twin: kernels/ref/rmsnorm_ref.cpp; arithmetic: kernels/math/rmsnorm.h).
#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/math/rmsnorm.h"

namespace moe {

using namespace cuda_detail;

// One block per row (blockIdx.x); threads stride the columns.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_forward_kernel(T* y, float* rstd, const T* x, const float* w, i64 C, double eps) {
  __shared__ double sh[kThreads];
  const i64 row = blockIdx.x;
  const T* xr = x + row * C;
  double ss = 0;
  for (i64 c = threadIdx.x; c < C; c += kThreads) {
    const double v = ld(xr + c);
    ss += v * v;
  }
  ss = block_sum(ss, sh);
  const float r = math::rmsnorm_rstd<float>(ss, C, eps);
  if (threadIdx.x == 0) rstd[row] = r;
  T* yr = y + row * C;
  for (i64 c = threadIdx.x; c < C; c += kThreads) yr[c] = T(math::rmsnorm_y<float>(ld(xr + c), w[c], r));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rmsnorm_backward_dx_kernel(T* dx, const T* dy, const T* x, const float* w,
                                                                       const float* rstd, i64 C) {
  __shared__ double sh[kThreads];
  const i64 row = blockIdx.x;
  const T* xr = x + row * C;
  const T* dyr = dy + row * C;
  const double r = rstd[row];
  double dot = 0;
  for (i64 c = threadIdx.x; c < C; c += kThreads)
    dot += math::rmsnorm_dot_term(double(ld(dyr + c)), double(w[c]), double(ld(xr + c)), r);
  dot = block_sum(dot, sh);
  const double m = dot / double(C);
  T* dxr = dx + row * C;
  for (i64 c = threadIdx.x; c < C; c += kThreads)
    dxr[c] = T(float(math::rmsnorm_dx(double(ld(dyr + c)), double(w[c]), double(ld(xr + c)), r, m)));
}

// One thread per column c, rows summed in order in double, then added to dw[c] in fp32: the CPU's arithmetic, bit for
// bit (__dadd_rn keeps nvcc from fusing the sum into an FMA, which the CPU build does not do).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_backward_dw_kernel(float* dw, const T* dy, const T* x, const float* rstd, i64 N, i64 C) {
  const i64 c = i64(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  double acc = 0;
  for (i64 n = 0; n < N; ++n)
    acc = __dadd_rn(acc,
                    math::rmsnorm_dw_term(double(ld(dy + n * C + c)), double(ld(x + n * C + c)), double(rstd[n])));
  dw[c] += float(acc);
}

template <typename T>
void rmsnorm_forward_cuda(T* y, float* rstd, const T* x, const float* w, i64 N, i64 C, double eps, cudaStream_t s) {
  if (N == 0) return;
  MT_CHECK(N < (i64(1) << 31) && C > 0, "rmsnorm_forward_cuda: N ", N, " C ", C);
  rmsnorm_forward_kernel<T><<<unsigned(N), kThreads, 0, s>>>(y, rstd, x, w, C, eps);
  MT_CUDA_LAUNCH("rmsnorm_forward");
}

template <typename T>
void rmsnorm_backward_cuda(T* dx, float* dw, const T* dy, const T* x, const float* w, const float* rstd, i64 N, i64 C,
                           cudaStream_t s) {
  if (N == 0 || C == 0) return;
  MT_CHECK(N < (i64(1) << 31), "rmsnorm_backward_cuda: N ", N);
  rmsnorm_backward_dx_kernel<T><<<unsigned(N), kThreads, 0, s>>>(dx, dy, x, w, rstd, C);
  MT_CUDA_LAUNCH("rmsnorm_backward_dx");
  rmsnorm_backward_dw_kernel<T><<<unsigned((C + kThreads - 1) / kThreads), kThreads, 0, s>>>(dw, dy, x, rstd, N, C);
  MT_CUDA_LAUNCH("rmsnorm_backward_dw");
}

#define MT_RMSNORM_CUDA(T)                                                                                          \
  template void rmsnorm_forward_cuda<T>(T*, float*, const T*, const float*, i64, i64, double, cudaStream_t);       \
  template void rmsnorm_backward_cuda<T>(T*, float*, const T*, const T*, const float*, const float*, i64, i64,     \
                                         cudaStream_t);
MT_RMSNORM_CUDA(float)
MT_RMSNORM_CUDA(bf16)
#undef MT_RMSNORM_CUDA

}  // namespace moe
