// Owns the row-major → column-major translation of LtGemm (pure index arithmetic, no CUDA: tested on the CPU).
#pragma once
#include "core/dims.h"
#include "core/op_enums.h"

namespace moe {

// Row-major C[M,N] = op(A)[M,K]·op(B)[K,N] is column-major Cᵀ[N,M] = op(B)ᵀ·op(A)ᵀ: cuBLASLt's first operand is our B
// (transposed iff tb), its second our A (transposed iff ta), m = N, n = M, k = K; the leading dimensions carry over
// unchanged (a row-major [r, c] matrix with leading dimension ld is the column-major [c, r] one with the same ld).
// The stored (column-major) shapes are those cublasLtMatrixLayoutCreate takes: rows × cols with ld ≥ rows.
struct LtColMajor {
  i64 m, n, k;
  bool trans_first, trans_second;  // CUBLAS_OP_T for cuBLASLt's A (= our B) / B (= our A)
  i64 ld_first, ld_second, ldc;
  i64 first_rows, first_cols, second_rows, second_cols;  // stored shapes of cuBLASLt's A and B; C is m × n
};

inline LtColMajor lt_colmajor(i64 M, i64 N, i64 K, Trans ta, Trans tb, i64 lda, i64 ldb, i64 ldc) {
  LtColMajor g{};
  g.m = N;
  g.n = M;
  g.k = K;
  g.trans_first = tb == Trans::Yes;
  g.trans_second = ta == Trans::Yes;
  g.ld_first = ldb;
  g.ld_second = lda;
  g.ldc = ldc;
  // op(first) is m × k, op(second) is k × n.
  g.first_rows = g.trans_first ? g.k : g.m;
  g.first_cols = g.trans_first ? g.m : g.k;
  g.second_rows = g.trans_second ? g.n : g.k;
  g.second_cols = g.trans_second ? g.k : g.n;
  return g;
}

}  // namespace moe
