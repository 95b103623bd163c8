// Owns the GEMM wrapper over cblas (float and double) and the linear-layer forward/backward built on it.
#pragma once
#include "core/bf16.h"
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


// ---- bf16 (docs/DESIGN.md "bf16" contract): bf16 inputs, fp32 accumulation, each bf16 output rounded once. ----
// C[M,N] (fp32) = alpha · op(A)[M,K] · op(B)[K,N] + beta · C with bf16 A, B (oneDNN gemm_bf16bf16f32: AVX512-BF16
// dot products where the CPU has them).
void gemm_bf16_f32(float* C, const bf16* A, const bf16* B, i64 M, i64 N, i64 K, Trans ta, Trans tb, i64 lda, i64 ldb,
                   i64 ldc, float alpha, float beta);
// y[N,out] (bf16) = round(x·Wᵀ (+ y when Add)); ws: fp32 workspace of N·out elements.
void linear_forward_bf16(bf16* y, const bf16* x, const bf16* W, i64 N, i64 in, i64 out, Accumulate acc, float* ws);
// y[N,out] (fp32) = x·Wᵀ (logits, router logits).
void linear_forward_bf16_f32out(float* y, const bf16* x, const bf16* W, i64 N, i64 in, i64 out);
// dx[N,in] (bf16, may be null) = round(dy·W (+ dx when Add)); dW[out,in] (fp32) += dyᵀ·x. ws: N·in floats.
void linear_backward_bf16(bf16* dx, float* dW, const bf16* dy, const bf16* x, const bf16* W, i64 N, i64 in, i64 out,
                          Accumulate dx_acc, float* ws);

}  // namespace moe
