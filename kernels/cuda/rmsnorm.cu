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

// The gain gradient in the chunked row order of math::kRmsDwRows (the CPU's, bit for bit; __dadd_rn keeps nvcc from
// fusing the sums into FMAs, which the CPU build does not do). Stage 1: block (x: 256 columns, y: one chunk of rows),
// one thread per column summing its chunk's rows in order into part[chunk, c]. Stage 2: one thread per column adding
// the chunk sums in chunk order into dw[c].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_backward_dw_chunks_kernel(double* part, const T* dy, const T* x, const float* rstd, i64 N, i64 C) {
  const i64 c = i64(blockIdx.x) * kThreads + threadIdx.x;
  const i64 k = blockIdx.y;
  if (c >= C) return;
  const i64 n0 = k * math::kRmsDwRows, n1 = n0 + math::kRmsDwRows < N ? n0 + math::kRmsDwRows : N;
  double acc = 0;
  for (i64 n = n0; n < n1; ++n)
    acc = __dadd_rn(acc,
                    math::rmsnorm_dw_term(double(ld(dy + n * C + c)), double(ld(x + n * C + c)), double(rstd[n])));
  part[k * C + c] = acc;
}

__global__ void __launch_bounds__(kThreads)
    rmsnorm_backward_dw_sum_kernel(float* dw, const double* part, i64 chunks, i64 C) {
  const i64 c = i64(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  double total = 0;
  for (i64 k = 0; k < chunks; ++k) total = __dadd_rn(total, part[k * C + c]);
  dw[c] += float(total);
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
                           void* ws, cudaStream_t s) {
  if (N == 0 || C == 0) return;
  MT_CHECK(N < (i64(1) << 31), "rmsnorm_backward_cuda: N ", N);
  MT_CHECK(ws, "rmsnorm_backward_cuda: no workspace (rmsnorm_backward_cuda_workspace_bytes(", N, ", ", C, "))");
  rmsnorm_backward_dx_kernel<T><<<unsigned(N), kThreads, 0, s>>>(dx, dy, x, w, rstd, C);
  MT_CUDA_LAUNCH("rmsnorm_backward_dx");
  const i64 chunks = math::rmsnorm_dw_chunks(N), col_blocks = (C + kThreads - 1) / kThreads;
  MT_CHECK(chunks < 65536 && col_blocks < (i64(1) << 31), "rmsnorm_backward_cuda: grid ", col_blocks, " x ", chunks);
  double* part = static_cast<double*>(ws);
  rmsnorm_backward_dw_chunks_kernel<T><<<dim3(unsigned(col_blocks), unsigned(chunks)), kThreads, 0, s>>>(
      part, dy, x, rstd, N, C);
  MT_CUDA_LAUNCH("rmsnorm_backward_dw_chunks");
  rmsnorm_backward_dw_sum_kernel<<<unsigned(col_blocks), kThreads, 0, s>>>(dw, part, chunks, C);
  MT_CUDA_LAUNCH("rmsnorm_backward_dw_sum");
}

#define MT_RMSNORM_CUDA(T)                                                                                          \
  template void rmsnorm_forward_cuda<T>(T*, float*, const T*, const float*, i64, i64, double, cudaStream_t);       \
  template void rmsnorm_backward_cuda<T>(T*, float*, const T*, const T*, const float*, const float*, i64, i64,     \
                                         void*, cudaStream_t);
MT_RMSNORM_CUDA(float)
MT_RMSNORM_CUDA(bf16)
#undef MT_RMSNORM_CUDA

}  // namespace moe
