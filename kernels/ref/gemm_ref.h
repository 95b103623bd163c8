// Owns the GEMM wrapper over cblas (float and double) and the linear-layer forward/backward built on it.
#pragma once
#include "core/dims.h"
#include "core/op_enums.h"

namespace moe {

// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C; row-major with leading dimensions.
template <typename T>
void gemm_ref(T* C, const T* A, const T* B, i64 M, i64 N, i64 K, Trans ta, Trans tb, i64 lda,
              i64 ldb, i64 ldc, T alpha, T beta);

// y[N,out] = x[N,in] · W^T, W [out,in] (PyTorch nn.Linear layout). beta=1 accumulates into y.
template <typename T>
void linear_forward_ref(T* y, const T* x, const T* W, i64 N, i64 in, i64 out, T beta = T(0));

// dx[N,in] (+)= dy[N,out] · W ; dW[out,in] += dy^T · x. dx may be null (no input gradient wanted).
template <typename T>
void linear_backward_ref(T* dx, T* dW, const T* dy, const T* x, const T* W, i64 N, i64 in, i64 out,
                         T dx_beta = T(0));

// The OpenBLAS core type to request before the library loads when its CPU detection falls short: "SkylakeX"
// when the CPU has AVX-512 (F, BW, DQ, VL) but OpenBLAS picked an AVX2 kernel (e.g. 0.3.21 on AMD Zen 4/5);
// empty when nothing is to be gained. (OpenBLAS reads OPENBLAS_CORETYPE only at load time.)
const char* blas_better_coretype();

}  // namespace moe
