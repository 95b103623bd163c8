// Owns the bf16 GEMM and linear layers on oneDNN's gemm_bf16bf16f32 (bf16 inputs, fp32 accumulation) [B3]; the only
// file that sees the oneDNN header.
#include <oneapi/dnnl/dnnl.h>

#include <cstdint>

#include "core/error.h"
#include "kernels/ref/gemm_ref.h"

// Exported by libdnnl with C linkage but declared only in oneDNN's internal headers: row-major
// C[M,N] = alpha · op(A) · op(B) + beta · C, transa/transb 'N' or 'T', A and B bf16 bit patterns.
extern "C" dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K,
                                               float alpha, const uint16_t* A, dnnl_dim_t lda, const uint16_t* B,
                                               dnnl_dim_t ldb, float beta, float* C, dnnl_dim_t ldc);

namespace moe {

static_assert(sizeof(bf16) == sizeof(uint16_t), "bf16 is its 16 bits");

static char tr(Trans t) { return t == Trans::Yes ? 'T' : 'N'; }

// contract: B3
void gemm_bf16_f32(float* C, const bf16* A, const bf16* B, i64 M, i64 N, i64 K, Trans ta, Trans tb, i64 lda, i64 ldb,
                   i64 ldc, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // op(A)·op(B) is empty: C = beta · C (beta 0 clears, as BLAS does)
    for (i64 i = 0; i < M; ++i)
      for (i64 j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  const dnnl_status_t st = dnnl_gemm_bf16bf16f32(tr(ta), tr(tb), M, N, K, alpha, reinterpret_cast<const uint16_t*>(A),
                                                 lda, reinterpret_cast<const uint16_t*>(B), ldb, beta, C, ldc);
  MT_CHECK(st == dnnl_success, "oneDNN gemm_bf16bf16f32 failed (status ", int(st), ") for M ", M, " N ", N, " K ", K,
           " lda ", lda, " ldb ", ldb, " ldc ", ldc);
}

// y[i] = round(acc[i] (+ float(y[i]) when Add)): the one rounding of a bf16 GEMM output.
static void round_out(bf16* y, const float* acc, i64 n, Accumulate mode) {
  if (mode == Accumulate::Add) {
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) y[i] = bf16(acc[i] + float(y[i]));
  } else {
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) y[i] = bf16(acc[i]);
  }
}

void linear_forward_bf16(bf16* y, const bf16* x, const bf16* W, i64 N, i64 in, i64 out, Accumulate acc, float* ws) {
  gemm_bf16_f32(ws, x, W, N, out, in, Trans::No, Trans::Yes, in, in, out, 1.f, 0.f);
  round_out(y, ws, N * out, acc);
}

void linear_forward_bf16_f32out(float* y, const bf16* x, const bf16* W, i64 N, i64 in, i64 out) {
  gemm_bf16_f32(y, x, W, N, out, in, Trans::No, Trans::Yes, in, in, out, 1.f, 0.f);
}

void linear_backward_bf16(bf16* dx, float* dW, const bf16* dy, const bf16* x, const bf16* W, i64 N, i64 in, i64 out,
                          Accumulate dx_acc, float* ws) {
  if (dx) {
    gemm_bf16_f32(ws, dy, W, N, in, out, Trans::No, Trans::No, out, in, in, 1.f, 0.f);
    round_out(dx, ws, N * in, dx_acc);
  }
  if (dW && N > 0) gemm_bf16_f32(dW, dy, x, out, in, N, Trans::Yes, Trans::No, out, in, in, 1.f, 1.f);
}

}  // namespace moe
