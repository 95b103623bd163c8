// Owns the CUDA router kernels: jitter, bf16 widen/narrow of the router input, softmax + top-k and backward rows
// (one thread per token, kernels/math/router.h), and the router statistics reductions [C4.router, C4.zloss].
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/moe_kernels.h"
#include "kernels/math/moe.h"
#include "kernels/math/router.h"

namespace moe {

namespace {

constexpr int kThreads = 256;
constexpr int kRowThreads = 128;

// Blocks for a grid-stride loop over n elements (kernels loop, so a cap only costs parallelism).
unsigned stride_blocks(i64 n) { return unsigned(std::min<i64>((n + kThreads - 1) / kThreads, i64(1) << 20)); }

template <typename T>
__global__ void jitter_kernel(T* xr, float* noise, const T* x, i64 n, double eps, Philox ph, uint32_t step,
                              uint32_t stream_id) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x) {
    const float f = float(moe_math::jitter_factor(ph.uniform(uint64_t(i), step, stream_id), eps));
    noise[i] = f;
    xr[i] = T(rn::mul(float(x[i]), f));
  }
}

__global__ void widen_kernel(float* dst, const bf16* src, i64 n) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x)
    dst[i] = float(src[i]);
}

__global__ void narrow_kernel(bf16* dst, const float* src, i64 n) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x)
    dst[i] = bf16(src[i]);
}

__global__ void softmax_topk_kernel(float* probs, int* topk_idx, float* topk_w, const float* logits,
                                    const float* bias, i64 T, i64 E, i64 K, double temperature, TopkNorm norm) {
  const i64 t = i64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  router_softmax_row<float>(probs + t * E, logits + t * E, E, temperature);
  router_topk_row<float>(topk_idx + t * K, topk_w + t * K, probs + t * E, bias, E, K);
  if (norm == TopkNorm::Renormalize) router_topk_renormalize<float>(topk_w + t * K, K);
}

__global__ void backward_rows_kernel(float* dlogits, const float* dtopk_w, const float* logits, const float* probs,
                                     const int* topk_idx, const float* topk_w, const double* aux_dp, double z_scale,
                                     i64 T, i64 E, i64 K, double temperature, TopkNorm norm) {
  const i64 t = i64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  router_backward_row<float>(dlogits + t * E, probs + t * E, logits + t * E, topk_idx + t * K, dtopk_w + t * K,
                             topk_w + t * K, aux_dp, z_scale, E, K, T, temperature, norm);
}

// Blocks 0..E−1: prob_sum[e]; block E: lse_sq; block E+1: logit_sq. Thread j sums t = j, j + 256, … serially,
// then a fixed tree.
__global__ void stats_kernel(double* prob_sum, double* lse_sq, double* logit_sq, const float* probs,
                             const float* logits, i64 T, i64 E) {
  __shared__ double part[kThreads];
  const i64 e = blockIdx.x;
  double acc = 0;
  if (e < E) {
    for (i64 t = threadIdx.x; t < T; t += kThreads) acc += double(probs[t * E + e]);
  } else if (e == E) {
    for (i64 t = threadIdx.x; t < T; t += kThreads) {
      const double l = router_lse_row<float>(logits + t * E, E);
      acc += l * l;
    }
  } else {
    for (i64 t = threadIdx.x; t < T; t += kThreads)
      for (i64 j = 0; j < E; ++j) acc += double(logits[t * E + j]) * double(logits[t * E + j]);
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int off = kThreads / 2; off > 0; off /= 2) {
    if (int(threadIdx.x) < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (e < E)
      prob_sum[e] = part[0];
    else if (e == E)
      *lse_sq = part[0];
    else
      *logit_sq = part[0];
  }
}

}  // namespace

template <typename T>
void router_jitter_cuda(T* xr, float* noise, const T* x, i64 n, double eps, uint64_t seed, uint32_t step,
                        uint32_t stream_id, cudaStream_t stream) {
  if (n <= 0) return;
  jitter_kernel<T><<<stride_blocks(n), kThreads, 0, stream>>>(xr, noise, x, n, eps,
                                                              Philox(seed, RngPurpose::RouterJitter), step, stream_id);
  MT_CUDA_LAUNCH("router_jitter");
}

void widen_bf16_cuda(float* dst, const bf16* src, i64 n, cudaStream_t stream) {
  if (n <= 0) return;
  widen_kernel<<<stride_blocks(n), kThreads, 0, stream>>>(dst, src, n);
  MT_CUDA_LAUNCH("widen_bf16");
}

void narrow_bf16_cuda(bf16* dst, const float* src, i64 n, cudaStream_t stream) {
  if (n <= 0) return;
  narrow_kernel<<<stride_blocks(n), kThreads, 0, stream>>>(dst, src, n);
  MT_CUDA_LAUNCH("narrow_bf16");
}

void router_softmax_topk_cuda(float* probs, int* topk_idx, float* topk_w, const float* logits, const float* bias,
                              i64 T, i64 E, i64 K, double temperature, TopkNorm norm, cudaStream_t stream) {
  if (T <= 0) return;
  MT_CHECK(K >= 1 && K <= E, "router top-k needs 1 <= K <= E; K = ", K, ", E = ", E);
  softmax_topk_kernel<<<unsigned((T + kRowThreads - 1) / kRowThreads), kRowThreads, 0, stream>>>(
      probs, topk_idx, topk_w, logits, bias, T, E, K, temperature, norm);
  MT_CUDA_LAUNCH("router_softmax_topk");
}

void router_backward_rows_cuda(float* dlogits, const float* dtopk_w, const float* logits, const float* probs,
                               const int* topk_idx, const float* topk_w, const double* aux_dp, double z_scale, i64 T,
                               i64 E, i64 K, double temperature, TopkNorm norm, cudaStream_t stream) {
  if (T <= 0) return;
  backward_rows_kernel<<<unsigned((T + kRowThreads - 1) / kRowThreads), kRowThreads, 0, stream>>>(
      dlogits, dtopk_w, logits, probs, topk_idx, topk_w, aux_dp, z_scale, T, E, K, temperature, norm);
  MT_CUDA_LAUNCH("router_backward_rows");
}

void router_stats_cuda(double* prob_sum, double* lse_sq, double* logit_sq, const float* probs, const float* logits,
                       i64 T, i64 E, cudaStream_t stream) {
  if (E <= 0) return;
  stats_kernel<<<unsigned(E + 2), kThreads, 0, stream>>>(prob_sum, lse_sq, logit_sq, probs, logits, T, E);
  MT_CUDA_LAUNCH("router_stats");
}

template void router_jitter_cuda<float>(float*, float*, const float*, i64, double, uint64_t, uint32_t, uint32_t,
                                        cudaStream_t);
template void router_jitter_cuda<bf16>(bf16*, float*, const bf16*, i64, double, uint64_t, uint32_t, uint32_t,
                                       cudaStream_t);

}  // namespace moe
