// Owns the CUDA NF4 dequantization kernel (twin: CpuQuantOps::nf4_dequantize; arithmetic: kernels/math/nf4.h) and its
// lookup tables in constant memory.
#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/quant_kernels.h"
#include "kernels/math/nf4.h"

namespace moe {

using namespace cuda_detail;

namespace {
__constant__ float c_nf4[16];
__constant__ float c_dmap[256];
}  // namespace

void nf4_tables_to_device() {
  MT_CUDA(cudaMemcpyToSymbol(c_nf4, nf4_code().data(), sizeof(float) * 16));
  MT_CUDA(cudaMemcpyToSymbol(c_dmap, dynamic_map_signed().data(), sizeof(float) * 256));
}

// Thread p decodes byte p: elements 2p and 2p+1 (both in block 2p / 64, as 64 is even). The tables are copied from
// constant memory to shared memory first: a warp's lanes index them with different codes, which the constant cache
// would serialize.
template <typename T>
__global__ void nf4_dequantize_kernel(T* out, Nf4View q) {
  __shared__ float nf4[16];
  __shared__ float dmap[256];
  for (int k = threadIdx.x; k < 256; k += blockDim.x) {
    dmap[k] = c_dmap[k];
    if (k < 16) nf4[k] = c_nf4[k];
  }
  __syncthreads();
  const i64 bytes = (q.n + 1) / 2;
  for (i64 p = i64(blockIdx.x) * blockDim.x + threadIdx.x; p < bytes; p += i64(gridDim.x) * blockDim.x) {
    const i64 i = 2 * p;
    const float am = math::nf4_block_absmax(q, i / kNf4Block, dmap);
    out[i] = math::nf4_value<T>(math::nf4_code_at(q.codes, i), am, nf4);
    if (i + 1 < q.n) out[i + 1] = math::nf4_value<T>(math::nf4_code_at(q.codes, i + 1), am, nf4);
  }
}

template <typename T>
void nf4_dequantize_cuda(T* out, const Nf4View& q, cudaStream_t s) {
  if (q.n <= 0) return;
  nf4_dequantize_kernel<T><<<grid_for((q.n + 1) / 2), kThreads, 0, s>>>(out, q);
  MT_CUDA_LAUNCH("nf4_dequantize");
}

template void nf4_dequantize_cuda<float>(float*, const Nf4View&, cudaStream_t);
template void nf4_dequantize_cuda<bf16>(bf16*, const Nf4View&, cudaStream_t);

}  // namespace moe
