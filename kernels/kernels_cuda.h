// Owns the raw-pointer launchers of the CUDA kernels; each mirrors its CPU twin in kernels/ref/ (same arguments + stream).
#pragma once
#include "core/dims.h"

typedef struct CUstream_st* cudaStream_t;

namespace moe {

// Twin of rmsnorm_forward_ref: y[N,C], rstd[N] from x[N,C], w[C]. [C4.rmsnorm]
void rmsnorm_forward_cuda(float* y, float* rstd, const float* x, const float* w, i64 N, i64 C, double eps,
                          cudaStream_t stream);
// Twin of rmsnorm_backward_ref: dx overwritten, dw accumulated (one block per column chunk, no atomics).
void rmsnorm_backward_cuda(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                           i64 N, i64 C, cudaStream_t stream);
// Twin of swiglu_forward_ref / swiglu_backward_ref. [C4.expert]
void swiglu_forward_cuda(float* h, const float* a, const float* b, i64 N, cudaStream_t stream);
void swiglu_backward_cuda(float* da, float* db, const float* dh, const float* a, const float* b, i64 N,
                          cudaStream_t stream);

}  // namespace moe
