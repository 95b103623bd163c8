// Owns the CUDA cross-entropy forward (per-row losses + fixed-order sum) and in-place backward (twin:
// kernels/ref/cross_entropy_ref.cpp; arithmetic: kernels/math/cross_entropy.h).
#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/math/cross_entropy.h"
#include "kernels/ref/cross_entropy_ref.h"  // kIgnoreTarget

namespace moe {

using namespace cuda_detail;

// The row's max and Σ exp(x − max) (double sum of fp32 exps; thread-strided partials, fixed tree). All threads get both.
template <typename T>
__device__ void row_stats(const T* x, i64 V, float* shf, double* shd, float& mx, double& sum) {
  float m = -INFINITY;
  for (i64 v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, ld(x + v));
  mx = block_max(m, shf);
  double s = 0;
  for (i64 v = threadIdx.x; v < V; v += kThreads) s += double(expf(ld(x + v) - mx));
  sum = block_sum(s, shd);
}

// Block g: rows g, g + G, … in order (G = gridDim.x); thread 0 keeps their running sum.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ce_partials_kernel(double* partial, const T* logits, const int32_t* targets, i64 N, i64 V) {
  __shared__ float shf[kThreads];
  __shared__ double shd[kThreads];
  double acc = 0;
  for (i64 row = blockIdx.x; row < N; row += gridDim.x) {
    const int32_t tgt = targets[row];
    if (tgt == kIgnoreTarget) continue;  // uniform over the block: the row's barriers are skipped by all threads
    if (tgt < 0 || i64(tgt) >= V) {
      acc += nan("");
      continue;
    }
    const T* x = logits + row * V;
    float mx;
    double sum;
    row_stats(x, V, shf, shd, mx, sum);  // ends with a barrier: shf/shd are free for the next row
    if (threadIdx.x == 0) acc += math::ce_row_loss(double(mx), sum, double(ld(x + tgt)));
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads) sum_doubles_kernel(double* total, const double* rows, i64 N) {
  __shared__ double sh[kThreads];
  double s = 0;
  for (i64 n = threadIdx.x; n < N; n += kThreads) s += rows[n];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) *total = s;
}

// Each thread reads every element it writes before writing it, and the row's statistics are complete (barriers
// inside row_stats) before any write: in place is safe.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ce_backward_kernel(T* logits, const int32_t* targets, i64 V, double scale) {
  __shared__ float shf[kThreads];
  __shared__ double shd[kThreads];
  const i64 row = blockIdx.x;
  const int32_t tgt = targets[row];
  T* x = logits + row * V;
  if (tgt == kIgnoreTarget) {
    for (i64 v = threadIdx.x; v < V; v += kThreads) x[v] = T(0.f);
    return;
  }
  float mx;
  double sum;
  row_stats(x, V, shf, shd, mx, sum);
  const double k = scale / sum;
  for (i64 v = threadIdx.x; v < V; v += kThreads)
    x[v] = T(math::ce_dlogit<float>(k * double(expf(ld(x + v) - mx)), scale, v, tgt));
}

template <typename T>
void cross_entropy_partials_cuda(double* partial, const T* logits, const int32_t* targets, i64 N, i64 V,
                                 cudaStream_t s) {
  if (N == 0) return;
  MT_CHECK(V > 0, "cross_entropy_partials_cuda: N ", N, " V ", V);
  ce_partials_kernel<T><<<unsigned(cross_entropy_blocks(N)), kThreads, 0, s>>>(partial, logits, targets, N, V);
  MT_CUDA_LAUNCH("cross_entropy_partials");
}

void sum_doubles_cuda(double* total, const double* rows, i64 N, cudaStream_t s) {
  sum_doubles_kernel<<<1, kThreads, 0, s>>>(total, rows, N);  // N == 0 writes 0
  MT_CUDA_LAUNCH("sum_doubles");
}

template <typename T>
void cross_entropy_backward_inplace_cuda(T* logits, const int32_t* targets, i64 N, i64 V, double scale,
                                         cudaStream_t s) {
  if (N == 0 || V == 0) return;
  MT_CHECK(N < (i64(1) << 31), "cross_entropy_backward_inplace_cuda: N ", N);
  ce_backward_kernel<T><<<unsigned(N), kThreads, 0, s>>>(logits, targets, V, scale);
  MT_CUDA_LAUNCH("cross_entropy_backward");
}

template void cross_entropy_partials_cuda<float>(double*, const float*, const int32_t*, i64, i64, cudaStream_t);
template void cross_entropy_partials_cuda<bf16>(double*, const bf16*, const int32_t*, i64, i64, cudaStream_t);
template void cross_entropy_backward_inplace_cuda<float>(float*, const int32_t*, i64, i64, double, cudaStream_t);
template void cross_entropy_backward_inplace_cuda<bf16>(bf16*, const int32_t*, i64, i64, double, cudaStream_t);

}  // namespace moe
