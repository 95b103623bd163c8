// Owns the cuBLASLt GEMM of the CUDA backend: row-major C (=|+=) op(A)·op(B) with bf16 or fp32 inputs, fp32 compute,
// and a per-shape cache of matmul descriptors, layouts and the chosen algorithm.
#pragma once
#include <cublasLt.h>

#include <array>
#include <map>

#include "backend/cuda/cuda_context.h"
#include "backend/cuda/lt_layout.h"
#include "core/dims.h"
#include "core/op_enums.h"

namespace moe {

enum class GemmType { F32, BF16 };

class LtGemm {
 public:
  explicit LtGemm(CudaContext& ctx) : ctx_(ctx) {}
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Row-major C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C on ctx.stream, leading dimensions lda/ldb/ldc
  // (of the stored, untransposed matrices). A and B of type ab, C of type c (read when beta ≠ 0 and written in
  // place); compute and scale type fp32 (CUBLAS_COMPUTE_32F: no TF32 for fp32), so a bf16 C is rounded once, in the
  // epilogue, from alpha·AB + beta·C in fp32. M, N or K = 0: nothing to multiply (K = 0 with beta = 0 clears C, as
  // BLAS). Workspace: ctx.lt_workspace. Cache: the descriptors and the heuristic's algorithm are made on the first
  // call of each (types, shape, transposes, leading dimensions, pointer alignments) and reused after; with the fixed
  // shapes of a run that is step 0, so the step loop allocates nothing (cuBLASLt itself allocates no device memory:
  // it runs in the given workspace).
  void gemm(void* C, GemmType c, const void* A, const void* B, GemmType ab, i64 M, i64 N, i64 K, Trans ta, Trans tb,
            i64 lda, i64 ldb, i64 ldc, float alpha, float beta);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::array<i64, 14>;
  const Plan& plan(const Key& key, const LtColMajor& g);

  CudaContext& ctx_;
  std::map<Key, Plan> cache_;
};

}  // namespace moe
