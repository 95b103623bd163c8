// Owns the CUDA RoPE rotation (the table is built on the host by the twin, cuda_dense.cpp) (twin: kernels/ref/rope_ref.cpp; arithmetic: kernels/math/rope.h).
#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/math/rope.h"

namespace moe {

using namespace cuda_detail;

// One thread per (row, head, i < D/2) pair; sgn = +1 Forward, −1 Inverse.
template <typename T>
__global__ void rope_apply_kernel(T* x, const float* cos_t, const float* sin_t, i64 L, i64 NHx, i64 D, i64 rows,
                                  float sgn) {
  const i64 half = D / 2, n = rows * NHx * half;
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x) {
    const i64 i = e % half, rh = e / half;  // rh = row · NHx + head
    const i64 row = rh / NHx, pos = row % L;
    T* v = x + rh * D;
    float o1, o2;
    math::rope_rotate<float>(ld(v + i), ld(v + i + half), cos_t[pos * half + i], sgn * sin_t[pos * half + i], o1, o2);
    v[i] = T(o1);
    v[i + half] = T(o2);
  }
}

template <typename T>
void rope_apply_cuda(T* x, const float* cos_t, const float* sin_t, i64 B, i64 L, i64 NHx, i64 D, RopeDirection dir,
                     cudaStream_t s) {
  const i64 n = B * L * NHx * (D / 2);
  if (n <= 0) return;
  rope_apply_kernel<T><<<grid_for(n), kThreads, 0, s>>>(x, cos_t, sin_t, L, NHx, D, B * L,
                                                         dir == RopeDirection::Forward ? 1.f : -1.f);
  MT_CUDA_LAUNCH("rope_apply");
}

template void rope_apply_cuda<float>(float*, const float*, const float*, i64, i64, i64, i64, RopeDirection,
                                     cudaStream_t);
template void rope_apply_cuda<bf16>(bf16*, const float*, const float*, i64, i64, i64, i64, RopeDirection, cudaStream_t);

}  // namespace moe
