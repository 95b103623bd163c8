// Owns the CUDA combine (weighted sum of a token's kept expert rows), its backward (one warp per pair, fixed
// butterfly order) and the router-gradient add (kernels/math/moe.h) [C4.combine].
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/moe_kernels.h"
#include "kernels/math/moe.h"

namespace moe {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
unsigned stride_blocks(i64 n) { return unsigned(std::min<i64>((n + kThreads - 1) / kThreads, i64(1) << 20)); }

// contract: C4.combine
template <typename T>
__global__ void combine_forward_kernel(T* out, const T* y, const float* w, const i64* pair_row, i64 T_, i64 K, i64 H) {
  const i64 n = T_ * H;
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x) {
    const i64 t = i / H, h = i - t * H;
    out[i] = T(moe_math::combine_elem<T>(y, w + t * K, pair_row + t * K, K, H, h));
  }
}

// Warp p (a whole warp, so the shuffles see 32 live lanes) handles pair p = t·K + k.
template <typename T>
__global__ void combine_backward_kernel(T* dy, float* dtopk_w, const T* dout, const T* y, const float* w,
                                        const i64* pair_row, i64 TK, i64 K, i64 H) {
  const i64 p = i64(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = int(threadIdx.x & 31u);
  if (p >= TK) return;  // warp-uniform
  const i64 r = pair_row[p];
  if (r < 0) {
    if (lane == 0) dtopk_w[p] = 0.f;
    return;  // warp-uniform
  }
  const float wk = w[p];
  const T* d = dout + (p / K) * H;
  const T* yr = y + r * H;
  T* dyr = dy + r * H;
  float acc = 0.f;
  for (i64 h = lane; h < H; h += 32) {
    const float dv = float(d[h]);
    acc = rn::add(acc, rn::mul(dv, float(yr[h])));
    dyr[h] = T(rn::mul(wk, dv));
  }
  for (int off = 16; off >= 1; off /= 2) acc = rn::add(acc, __shfl_xor_sync(0xffffffffu, acc, off));
  if (lane == 0) dtopk_w[p] = acc;
}

template <typename T>
__global__ void add_router_grad_kernel(T* dx, const T* dxr, const float* noise, i64 n) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x) {
    const float g = noise ? rn::mul(float(dxr[i]), noise[i]) : float(dxr[i]);
    dx[i] = T(rn::add(float(dx[i]), g));
  }
}

}  // namespace

template <typename T>
void combine_forward_cuda(T* out, const T* y, const float* topk_w, const i64* pair_row, i64 T_, i64 K, i64 H,
                          cudaStream_t stream) {
  if (T_ <= 0 || H <= 0) return;
  combine_forward_kernel<T><<<stride_blocks(T_ * H), kThreads, 0, stream>>>(out, y, topk_w, pair_row, T_, K, H);
  MT_CUDA_LAUNCH("combine_forward");
}

template <typename T>
void combine_backward_cuda(T* dy, float* dtopk_w, const T* dout, const T* y, const float* topk_w, const i64* pair_row,
                           i64 T_, i64 K, i64 H, cudaStream_t stream) {
  const i64 TK = T_ * K;
  if (TK <= 0) return;
  const i64 blocks = (TK + kWarps - 1) / kWarps;
  MT_CHECK(blocks <= (i64(1) << 31) - 1, "combine_backward_cuda: T·K = ", TK, " pairs exceed one grid");
  combine_backward_kernel<T><<<unsigned(blocks), kThreads, 0, stream>>>(dy, dtopk_w, dout, y, topk_w, pair_row, TK,
                                                                         K, H);
  MT_CUDA_LAUNCH("combine_backward");
}

template <typename T>
void add_router_grad_cuda(T* dx, const T* dxr, const float* noise, i64 n, cudaStream_t stream) {
  if (n <= 0) return;
  add_router_grad_kernel<T><<<stride_blocks(n), kThreads, 0, stream>>>(dx, dxr, noise, n);
  MT_CUDA_LAUNCH("add_router_grad");
}

#define MOE_COMBINE_INSTANTIATE(T)                                                                             \
  template void combine_forward_cuda<T>(T*, const T*, const float*, const i64*, i64, i64, i64, cudaStream_t);  \
  template void combine_backward_cuda<T>(T*, float*, const T*, const T*, const float*, const i64*, i64, i64,   \
                                         i64, cudaStream_t);                                                   \
  template void add_router_grad_cuda<T>(T*, const T*, const float*, i64, cudaStream_t);
MOE_COMBINE_INSTANTIATE(float)
MOE_COMBINE_INSTANTIATE(bf16)
#undef MOE_COMBINE_INSTANTIATE

}  // namespace moe
