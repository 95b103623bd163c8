// Owns the row-major GEMM entry of the CUDA MoE ops (cuBLAS on the context's stream and workspace) and the grouped
// expert MLP: per-block GEMMs over the host RowBlock list around the SwiGLU/dropout kernels of kernels/cuda.
#include "backend/cuda/grouped_gemm.h"

#include <algorithm>
#include <climits>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "kernels/cuda/moe_kernels.h"

namespace moe {

namespace {

cublasOperation_t to_cublas(GemmOp op) { return op == GemmOp::T ? CUBLAS_OP_T : CUBLAS_OP_N; }

int fit_int(i64 v, const char* what) {
  MT_CHECK(v >= 0 && v <= INT_MAX, "GEMM ", what, " = ", v, " does not fit cuBLAS's int");
  return int(v);
}

// Rows covered by the blocks: max(row + rows) (0 for an empty list).
i64 rows_spanned(const std::vector<RowBlock>& blocks) {
  i64 m = 0;
  for (const RowBlock& b : blocks) {
    MT_CHECK(b.row >= 0 && b.rows >= 0, "row block of expert ", b.expert, ": row ", b.row, ", rows ", b.rows);
    if (b.rows > 0) m = std::max(m, b.row + b.rows);
  }
  return m;
}

DropoutArgs dropout_args(const ExpertDropout& d, i64 row0) {
  DropoutArgs a{};
  a.keys = d.keys ? d.keys + row0 : nullptr;
  a.p = d.p;
  a.keep = d.keys ? float(1.0 / (1.0 - d.p)) : 1.f;
  a.seed = d.seed;
  a.step = d.step;
  return a;
}

}  // namespace

template <>
cudaDataType_t cuda_data_type<float>() {
  return CUDA_R_32F;
}
template <>
cudaDataType_t cuda_data_type<bf16>() {
  return CUDA_R_16BF;
}

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: a row-major matrix with leading dimension ld is its
// transpose in column-major with the same ld, so cuBLAS gets (B, A) swapped with the same op flags and (n, m, k).
void gemm_rowmajor(CudaContext& ctx, void* C, cudaDataType_t tc, i64 ldc, const void* A, cudaDataType_t ta, GemmOp opa,
                   i64 lda, const void* B, cudaDataType_t tb, GemmOp opb, i64 ldb, i64 m, i64 n, i64 k, float alpha,
                   float beta) {
  if (m == 0 || n == 0) return;
  if (k == 0 && beta == 1.f) return;
  const cublasComputeType_t compute =
      ta == CUDA_R_32F && tb == CUDA_R_32F ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  MT_CUBLAS(cublasGemmEx(ctx.blas, to_cublas(opb), to_cublas(opa), fit_int(n, "n"), fit_int(m, "m"), fit_int(k, "k"),
                         &alpha, B, tb, fit_int(ldb, "ldb"), A, ta, fit_int(lda, "lda"), &beta, C, tc,
                         fit_int(ldc, "ldc"), compute, CUBLAS_GEMM_DEFAULT));
}

// contract: C4.expert
template <typename T>
void grouped_mlp_forward_cuda(CudaContext& ctx, T* y, ExpertMlpActs<T>& acts, const T* x,
                              const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                              const ExpertWeights<T>& w, i64 H, i64 I, float* ws, i64 ws_floats) {
  const cudaDataType_t tt = cuda_data_type<T>();
  MT_CHECK(rows_spanned(blocks) * 2 * I <= ws_floats, "grouped MLP forward: workspace of ", ws_floats, " floats, ",
           rows_spanned(blocks) * 2 * I, " needed (reserve_workspace)");
  for (const RowBlock& b : blocks) {
    const i64 n = b.rows, off = b.row, j = b.expert;
    if (n == 0) continue;
    MT_CHECK(j >= 0 && j < i64(w.w1.size()), "row block names local expert ", j, " of ", w.w1.size());
    float* ab = ws + off * 2 * I;  // [n, 2I] gate | up
    const T* xb = x + off * H;
    if (w.w3[j] == w.w1[j] + I * H) {
      gemm_rowmajor(ctx, ab, CUDA_R_32F, 2 * I, xb, tt, GemmOp::N, H, w.w1[j], tt, GemmOp::T, H, n, 2 * I, H, 1.f, 0.f);
    } else {
      gemm_rowmajor(ctx, ab, CUDA_R_32F, 2 * I, xb, tt, GemmOp::N, H, w.w1[j], tt, GemmOp::T, H, n, I, H, 1.f, 0.f);
      gemm_rowmajor(ctx, ab + I, CUDA_R_32F, 2 * I, xb, tt, GemmOp::N, H, w.w3[j], tt, GemmOp::T, H, n, I, H, 1.f, 0.f);
    }
    expert_swiglu_forward_cuda<T>(acts.a + off * I, acts.b + off * I, acts.hact + off * I, ab, n, I,
                                  dropout_args(drop, off), ctx.stream);
    // y [n,H] = hact [n,I] · W2 [H,I]ᵀ, rounded once to T.
    gemm_rowmajor(ctx, y + off * H, tt, H, acts.hact + off * I, tt, GemmOp::N, I, w.w2[j], tt, GemmOp::T, I, n, H, I,
                  1.f, 0.f);
  }
}

template <typename T>
void grouped_mlp_backward_cuda(CudaContext& ctx, T* dx, ExpertGrads<T>& g, T* da, T* db, const T* dy,
                               const ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                               const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I, float* ws,
                               i64 ws_floats) {
  const cudaDataType_t tt = cuda_data_type<T>();
  constexpr bool kBf16 = std::is_same<T, bf16>::value;
  const i64 rows = rows_spanned(blocks);
  const i64 need = rows * I + (kBf16 ? rows * H : 0);
  MT_CHECK(need <= ws_floats, "grouped MLP backward: workspace of ", ws_floats, " floats, ", need,
           " needed (reserve_workspace)");
  float* dh_all = ws;               // [rows, I]
  float* dxf_all = ws + rows * I;   // [rows, H] (bf16: dx before rounding)
  for (const RowBlock& b : blocks) {
    const i64 n = b.rows, off = b.row, j = b.expert;
    if (n == 0) continue;
    MT_CHECK(j >= 0 && j < i64(w.w1.size()) && j < i64(g.w1.size()), "row block names local expert ", j, " of ",
             w.w1.size());
    const T* dyb = dy + off * H;
    const T* xb = x + off * H;
    float* dh = dh_all + off * I;
    // dh [n,I] = dy [n,H] · W2 [H,I]; dW2 [H,I] += dyᵀ · hact.
    gemm_rowmajor(ctx, dh, CUDA_R_32F, I, dyb, tt, GemmOp::N, H, w.w2[j], tt, GemmOp::N, I, n, I, H, 1.f, 0.f);
    gemm_rowmajor(ctx, g.w2[j], CUDA_R_32F, I, dyb, tt, GemmOp::T, H, acts.hact + off * I, tt, GemmOp::N, I, H, I, n,
                  1.f, 1.f);
    T* dab = da + off * I;
    T* dbb = db + off * I;
    expert_swiglu_backward_cuda<T>(dab, dbb, dh, acts.a + off * I, acts.b + off * I, n, I, dropout_args(drop, off),
                                   ctx.stream);
    // dx [n,H] = da [n,I] · W1 [I,H] + db · W3, summed in fp32.
    float* dxf = kBf16 ? dxf_all + off * H : reinterpret_cast<float*>(dx + off * H);
    gemm_rowmajor(ctx, dxf, CUDA_R_32F, H, dab, tt, GemmOp::N, I, w.w1[j], tt, GemmOp::N, H, n, H, I, 1.f, 0.f);
    gemm_rowmajor(ctx, dxf, CUDA_R_32F, H, dbb, tt, GemmOp::N, I, w.w3[j], tt, GemmOp::N, H, n, H, I, 1.f, 1.f);
    if constexpr (kBf16) narrow_bf16_cuda(reinterpret_cast<bf16*>(dx + off * H), dxf, n * H, ctx.stream);
    // dW1, dW3 [I,H] += daᵀ · x, dbᵀ · x.
    gemm_rowmajor(ctx, g.w1[j], CUDA_R_32F, H, dab, tt, GemmOp::T, I, xb, tt, GemmOp::N, H, I, H, n, 1.f, 1.f);
    gemm_rowmajor(ctx, g.w3[j], CUDA_R_32F, H, dbb, tt, GemmOp::T, I, xb, tt, GemmOp::N, H, I, H, n, 1.f, 1.f);
  }
}

#define MOE_GROUPED_INSTANTIATE(T)                                                                                 \
  template void grouped_mlp_forward_cuda<T>(CudaContext&, T*, ExpertMlpActs<T>&, const T*,                         \
                                            const std::vector<RowBlock>&, const ExpertDropout&,                    \
                                            const ExpertWeights<T>&, i64, i64, float*, i64);                       \
  template void grouped_mlp_backward_cuda<T>(CudaContext&, T*, ExpertGrads<T>&, T*, T*, const T*,                  \
                                             const ExpertMlpActs<T>&, const T*, const std::vector<RowBlock>&,      \
                                             const ExpertDropout&, const ExpertWeights<T>&, i64, i64, float*, i64);
MOE_GROUPED_INSTANTIATE(float)
MOE_GROUPED_INSTANTIATE(bf16)
#undef MOE_GROUPED_INSTANTIATE

}  // namespace moe
