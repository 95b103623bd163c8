// Owns the CUDA SwiGLU forward/backward (twin: kernels/ref/swiglu_ref.cpp; arithmetic: kernels/math/swiglu.h).
#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/math/swiglu.h"

namespace moe {

using namespace cuda_detail;

template <typename T>
__global__ void swiglu_forward_kernel(T* h, const T* a, const T* b, i64 n) {
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x) {
    const float av = ld(a + e);
    const float sg = math::sigmoid_from_exp_neg(expf(-av));
    h[e] = T(math::swiglu_h(av, ld(b + e), sg));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* da, T* db, const T* dh, const T* a, const T* b, i64 n) {
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x) {
    const float av = ld(a + e), bv = ld(b + e), g = ld(dh + e);
    const float sg = math::sigmoid_from_exp_neg(expf(-av));
    const float dbv = math::swiglu_db(g, av, sg), dav = math::swiglu_da(g, av, bv, sg);
    db[e] = T(dbv);  // written after every read of element e: da/db may alias a/b/dh element-wise
    da[e] = T(dav);
  }
}

template <typename T>
void swiglu_forward_cuda(T* h, const T* a, const T* b, i64 n, cudaStream_t s) {
  if (n <= 0) return;
  swiglu_forward_kernel<T><<<grid_for(n), kThreads, 0, s>>>(h, a, b, n);
  MT_CUDA_LAUNCH("swiglu_forward");
}

template <typename T>
void swiglu_backward_cuda(T* da, T* db, const T* dh, const T* a, const T* b, i64 n, cudaStream_t s) {
  if (n <= 0) return;
  swiglu_backward_kernel<T><<<grid_for(n), kThreads, 0, s>>>(da, db, dh, a, b, n);
  MT_CUDA_LAUNCH("swiglu_backward");
}

template void swiglu_forward_cuda<float>(float*, const float*, const float*, i64, cudaStream_t);
template void swiglu_forward_cuda<bf16>(bf16*, const bf16*, const bf16*, i64, cudaStream_t);
template void swiglu_backward_cuda<float>(float*, float*, const float*, const float*, const float*, i64,
                                          cudaStream_t);
template void swiglu_backward_cuda<bf16>(bf16*, bf16*, const bf16*, const bf16*, const bf16*, i64, cudaStream_t);

}  // namespace moe
