// Owns the cuBLASLt GEMM wrapper (row-major over cuBLASLt's column-major, per-shape plan cache).
#include "backend/cuda/cublaslt_gemm.h"

#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace moe {

namespace {

cudaDataType_t dtype(GemmType t) { return t == GemmType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }
i64 elem_bytes(GemmType t) { return t == GemmType::BF16 ? 2 : 4; }

// The largest power of two (≤ 256) dividing the address: cuBLASLt's heuristic assumes 256-byte alignment unless told.
i64 alignment(const void* p) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  i64 a = 256;
  while (a > 1 && (u % uintptr_t(a)) != 0) a /= 2;
  return a;
}

}  // namespace

LtGemm::~LtGemm() {
  for (auto& kv : cache_) {
    Plan& p = kv.second;
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    if (p.op) cublasLtMatmulDescDestroy(p.op);
  }
}

// Key: [c type, ab type, m, n, k, opA, opB, lda, ldb, ldc, align A, align B, align C, beta ≠ 0], in cuBLASLt's
// column-major terms (g, see lt_layout.h).
const LtGemm::Plan& LtGemm::plan(const Key& key, const LtColMajor& g) {
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  const GemmType ct = GemmType(key[0]), abt = GemmType(key[1]);
  const i64 m = g.m, n = g.n, k = g.k, lda = g.ld_first, ldb = g.ld_second, ldc = g.ldc;
  const cublasOperation_t opa = cublasOperation_t(key[5]), opb = cublasOperation_t(key[6]);
  Plan p;
  MT_CUBLAS(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  MT_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
  MT_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
  // Stored (column-major) shapes: op(A) is m×k, op(B) is k×n, C is m×n.
  MT_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, dtype(abt), g.first_rows, g.first_cols, lda));
  MT_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, dtype(abt), g.second_rows, g.second_cols, ldb));
  MT_CUBLAS(cublasLtMatrixLayoutCreate(&p.c, dtype(ct), m, n, ldc));
  cublasLtMatmulPreference_t pref = nullptr;
  MT_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = ctx_.lt_workspace_bytes;
  const uint32_t al_a = uint32_t(key[10]), al_b = uint32_t(key[11]), al_c = uint32_t(key[12]);
  MT_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  MT_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
  MT_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
  MT_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
  MT_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx_.lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
    MT_CHECK(false, "cuBLASLt found no algorithm (", cublasGetStatusString(st), ") for m ", m, " n ", n, " k ", k,
             " lda ", lda, " ldb ", ldb, " ldc ", ldc, " alignments ", al_a, "/", al_b, "/", al_c);
  }
  p.algo = res.algo;
  return cache_.emplace(key, p).first->second;
}

void LtGemm::gemm(void* C, GemmType c, const void* A, const void* B, GemmType ab, i64 M, i64 N, i64 K, Trans ta,
                  Trans tb, i64 lda, i64 ldb, i64 ldc, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // op(A)·op(B) is empty
    if (beta == 0.f) {
      MT_CHECK(ldc == N, "LtGemm: K = 0 with beta 0 and a strided C is not supported");
      MT_CUDA(cudaMemsetAsync(C, 0, size_t(M * N * elem_bytes(c)), ctx_.stream));
    } else {
      MT_CHECK(beta == 1.f, "LtGemm: K = 0 with beta ", beta, " is not supported");
    }
    return;
  }
  // Row-major C[M,N] = op(A)·op(B) is column-major Cᵀ[N,M] = op(B)ᵀ·op(A)ᵀ: cuBLASLt's A is our B (transposed iff
  // tb), its B is our A (transposed iff ta), m = N, n = M; the leading dimensions carry over unchanged.
  const LtColMajor g = lt_colmajor(M, N, K, ta, tb, lda, ldb, ldc);
  const cublasOperation_t opa = g.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = g.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N;
  const Key key{i64(c),           i64(ab),        g.m,         g.n,         g.k, i64(opa), i64(opb), g.ld_first,
                g.ld_second,      g.ldc,          alignment(B), alignment(A), alignment(C), beta != 0.f ? 1 : 0};
  const Plan& p = plan(key, g);
  MT_CUBLAS(cublasLtMatmul(ctx_.lt, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, ctx_.lt_workspace,
                           ctx_.lt_workspace_bytes, ctx_.stream));
}

}  // namespace moe
