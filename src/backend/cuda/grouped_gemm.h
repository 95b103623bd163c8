// Owns the GEMMs of the CUDA MoE ops: one row-major GEMM entry on the context's cuBLAS handle (fp32 accumulation,
// deterministic, the context's workspace) and the grouped expert MLP over a host RowBlock list, variable rows per
// expert, no padding to capacity [C4.expert].
#pragma once
#include <cuda_runtime.h>
#include <library_types.h>

#include <vector>

#include "backend/cuda/cuda_context.h"
#include "backend/moe_ops.h"

namespace moe {

enum class GemmOp { N, T };

// C [m,n] (row-major, leading dimension ldc, element type tc) = alpha · op(A) · op(B) + beta · C with op(A) [m,k]
// (A stored [m,k] for N, [k,m] for T, leading dimension lda) and op(B) [k,n] likewise. Products accumulate in fp32:
// CUBLAS_COMPUTE_32F for bf16 inputs (tensor cores), CUBLAS_COMPUTE_32F_PEDANTIC when A and B are fp32 (no TF32).
// A bf16 C is rounded once from the fp32 sum. cuBLAS is bitwise reproducible on one GPU model and one stream.
// m, n or k = 0: nothing (k = 0 with beta = 1 leaves C). Dimensions must fit int (checked).
void gemm_rowmajor(CudaContext& ctx, void* C, cudaDataType_t tc, i64 ldc, const void* A, cudaDataType_t ta, GemmOp opa,
                   i64 lda, const void* B, cudaDataType_t tb, GemmOp opb, i64 ldb, i64 m, i64 n, i64 k, float alpha,
                   float beta);

template <typename T>
cudaDataType_t cuda_data_type();

// Forward of every block (expert j, rows [row, row + rows)) in list order: ab [rows,2I] fp32 = x · [W1;W3]ᵀ (one GEMM
// when w3_j == w1_j + I·H, else two into the column halves), a, b, hact = expert SwiGLU kernel (rounded a, b; mask
// from drop.keys), y = hact · W2ᵀ (T, rounded once). ws: fp32 scratch of at least max(row + rows)·2I floats.
template <typename T>
void grouped_mlp_forward_cuda(CudaContext& ctx, T* y, ExpertMlpActs<T>& acts, const T* x,
                              const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                              const ExpertWeights<T>& w, i64 H, i64 I, float* ws, i64 ws_floats);

// Backward, the order of the CPU bf16 table: dh = dy · W2 (fp32), dW2 += dyᵀ · hact (fp32, beta 1); the SwiGLU
// backward kernel (mask from drop.keys) rounds da, db; dx = round(da · W1 + db · W3) summed in fp32 (T = float: the
// two GEMMs into dx directly); dW1 += daᵀ · x, dW3 += dbᵀ · x (one GEMM over [da db] is not used: da, db live in
// separate buffers; each weight-gradient element is the same dot product either way). Weight gradients accumulate
// block by block in list order. ws: fp32 scratch of at least rows_max·(I + H) floats, rows_max = max(row + rows).
template <typename T>
void grouped_mlp_backward_cuda(CudaContext& ctx, T* dx, ExpertGrads<T>& g, T* da, T* db, const T* dy,
                               const ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                               const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I, float* ws,
                               i64 ws_floats);

}  // namespace moe
