// Owns the CUDA dispatch gather (permute), its backward (unpermute: a fixed slot-order sum per token) and the pair
// keys of the expert rows (kernels/math/moe.h) [C4.expert].
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/moe_kernels.h"
#include "kernels/math/moe.h"

namespace moe {

namespace {

constexpr int kThreads = 256;
unsigned stride_blocks(i64 n) { return unsigned(std::min<i64>((n + kThreads - 1) / kThreads, i64(1) << 20)); }

// Element (r, h) of xg for r < P (P read once per thread from the device plan).
template <typename T>
__global__ void permute_kernel(T* xg, const T* x, const i64* row_pair, const i64* P_dev, i64 K, i64 H) {
  const i64 n = *P_dev * H;
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x) {
    const i64 r = i / H, h = i - r * H;
    xg[i] = x[(row_pair[r] / K) * H + h];
  }
}

template <typename T>
__global__ void unpermute_kernel(T* dx, const T* dxg, const i64* pair_row, i64 T_, i64 K, i64 H) {
  const i64 n = T_ * H;
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x) {
    const i64 t = i / H, h = i - t * H;
    dx[i] = T(moe_math::unpermute_elem<T>(dxg, pair_row + t * K, K, H, h));
  }
}

__global__ void pair_keys_kernel(i64* keys, const i64* row_pair, const i64* P_dev, uint32_t stream_id) {
  const i64 P = *P_dev;
  for (i64 r = i64(blockIdx.x) * blockDim.x + threadIdx.x; r < P; r += i64(gridDim.x) * blockDim.x)
    keys[r] = moe_math::pair_key(stream_id, row_pair[r]);
}

}  // namespace

template <typename T>
void permute_cuda(T* xg, const T* x, const i64* row_pair, const i64* P_dev, i64 TK, i64 K, i64 H,
                  cudaStream_t stream) {
  if (TK <= 0 || H <= 0) return;
  permute_kernel<T><<<stride_blocks(TK * H), kThreads, 0, stream>>>(xg, x, row_pair, P_dev, K, H);
  MT_CUDA_LAUNCH("permute");
}

template <typename T>
void unpermute_cuda(T* dx, const T* dxg, const i64* pair_row, i64 T_, i64 K, i64 H, cudaStream_t stream) {
  if (T_ <= 0 || H <= 0) return;
  unpermute_kernel<T><<<stride_blocks(T_ * H), kThreads, 0, stream>>>(dx, dxg, pair_row, T_, K, H);
  MT_CUDA_LAUNCH("unpermute");
}

void pair_keys_cuda(i64* keys, const i64* row_pair, const i64* P_dev, i64 TK, uint32_t stream_id,
                    cudaStream_t stream) {
  if (TK <= 0) return;
  MT_CHECK(TK <= (i64(1) << 32), "pair ids need 32 bits, T·K = ", TK);
  pair_keys_kernel<<<stride_blocks(TK), kThreads, 0, stream>>>(keys, row_pair, P_dev, stream_id);
  MT_CUDA_LAUNCH("pair_keys");
}

#define MOE_PERMUTE_INSTANTIATE(T)                                                                        \
  template void permute_cuda<T>(T*, const T*, const i64*, const i64*, i64, i64, i64, cudaStream_t);       \
  template void unpermute_cuda<T>(T*, const T*, const i64*, i64, i64, i64, cudaStream_t);
MOE_PERMUTE_INSTANTIATE(float)
MOE_PERMUTE_INSTANTIATE(bf16)
#undef MOE_PERMUTE_INSTANTIATE

}  // namespace moe
