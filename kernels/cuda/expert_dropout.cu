// Owns the CUDA expert SwiGLU between the grouped GEMMs: gate|up split and rounding, SwiGLU with the expert-dropout
// mask regenerated from pair keys (kernels/math/moe.h), and its backward [C4.expert].
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/moe_kernels.h"
#include "kernels/math/moe.h"

namespace moe {

namespace {

constexpr int kThreads = 256;
unsigned stride_blocks(i64 n) { return unsigned(std::min<i64>((n + kThreads - 1) / kThreads, i64(1) << 20)); }

__device__ inline float mask_of(const DropoutArgs& d, const Philox& ph, i64 r, i64 i, i64 I) {
  return d.keys ? moe_math::dropout_factor<float>(ph, d.keys[r], i, I, d.step, d.p, d.keep) : 1.f;
}

template <typename T>
__global__ void swiglu_forward_kernel(T* a, T* b, T* h, const float* ab, i64 rows, i64 I, DropoutArgs drop,
                                      Philox ph) {
  const i64 n = rows * I;
  for (i64 j = i64(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += i64(gridDim.x) * blockDim.x) {
    const i64 r = j / I, i = j - r * I;
    const T av = T(ab[r * 2 * I + i]);
    const T bv = T(ab[r * 2 * I + I + i]);
    a[j] = av;
    b[j] = bv;
    h[j] = T(moe_math::expert_swiglu(float(av), float(bv), mask_of(drop, ph, r, i, I)));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* da, T* db, const float* dh, const T* a, const T* b, i64 rows, i64 I,
                                       DropoutArgs drop, Philox ph) {
  const i64 n = rows * I;
  for (i64 j = i64(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += i64(gridDim.x) * blockDim.x) {
    const i64 r = j / I, i = j - r * I;
    const float g = drop.keys ? dh[j] * mask_of(drop, ph, r, i, I) : dh[j];
    float dav, dbv;
    moe_math::expert_swiglu_backward(dav, dbv, g, float(a[j]), float(b[j]));
    da[j] = T(dav);
    db[j] = T(dbv);
  }
}

}  // namespace

template <typename T>
void expert_swiglu_forward_cuda(T* a, T* b, T* h, const float* ab, i64 rows, i64 I, const DropoutArgs& drop,
                                cudaStream_t stream) {
  if (rows <= 0 || I <= 0) return;
  swiglu_forward_kernel<T><<<stride_blocks(rows * I), kThreads, 0, stream>>>(
      a, b, h, ab, rows, I, drop, Philox(drop.seed, RngPurpose::ExpertDropout));
  MT_CUDA_LAUNCH("expert_swiglu_forward");
}

template <typename T>
void expert_swiglu_backward_cuda(T* da, T* db, const float* dh, const T* a, const T* b, i64 rows, i64 I,
                                 const DropoutArgs& drop, cudaStream_t stream) {
  if (rows <= 0 || I <= 0) return;
  swiglu_backward_kernel<T><<<stride_blocks(rows * I), kThreads, 0, stream>>>(
      da, db, dh, a, b, rows, I, drop, Philox(drop.seed, RngPurpose::ExpertDropout));
  MT_CUDA_LAUNCH("expert_swiglu_backward");
}

#define MOE_SWIGLU_INSTANTIATE(T)                                                                                   \
  template void expert_swiglu_forward_cuda<T>(T*, T*, T*, const float*, i64, i64, const DropoutArgs&, cudaStream_t); \
  template void expert_swiglu_backward_cuda<T>(T*, T*, const float*, const T*, const T*, i64, i64,                  \
                                               const DropoutArgs&, cudaStream_t);
MOE_SWIGLU_INSTANTIATE(float)
MOE_SWIGLU_INSTANTIATE(bf16)
#undef MOE_SWIGLU_INSTANTIATE

}  // namespace moe
