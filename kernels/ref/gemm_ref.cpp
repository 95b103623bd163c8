// Owns the cblas-backed GEMM (OpenBLAS) for float and double, and linear forward/backward.
#include "kernels/ref/gemm_ref.h"

#include <cblas.h>

#include <cstring>

extern "C" char* openblas_get_corename(void);

namespace moe {

static CBLAS_TRANSPOSE cb(Trans t) { return t == Trans::Yes ? CblasTrans : CblasNoTrans; }

template <>
void gemm_ref<float>(float* C, const float* A, const float* B, i64 M, i64 N, i64 K, Trans ta,
                     Trans tb, i64 lda, i64 ldb, i64 ldc, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, cb(ta), cb(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm_ref<double>(double* C, const double* A, const double* B, i64 M, i64 N, i64 K, Trans ta,
                      Trans tb, i64 lda, i64 ldb, i64 ldc, double alpha, double beta) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, cb(ta), cb(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

const char* blas_better_coretype() {
  const char* core = openblas_get_corename();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (avx512 && core && (std::strcmp(core, "Haswell") == 0 || std::strcmp(core, "Zen") == 0)) return "SkylakeX";
  return "";
}

template <typename T>
void linear_forward_ref(T* y, const T* x, const T* W, i64 N, i64 in, i64 out, T beta) {
  gemm_ref<T>(y, x, W, N, out, in, Trans::No, Trans::Yes, in, in, out, T(1), beta);
}

template <typename T>
void linear_backward_ref(T* dx, T* dW, const T* dy, const T* x, const T* W, i64 N, i64 in, i64 out,
                         T dx_beta) {
  if (dx) gemm_ref<T>(dx, dy, W, N, in, out, Trans::No, Trans::No, out, in, in, T(1), dx_beta);
  if (dW && N > 0) gemm_ref<T>(dW, dy, x, out, in, N, Trans::Yes, Trans::No, out, in, in, T(1), T(1));
}

template void linear_forward_ref<float>(float*, const float*, const float*, i64, i64, i64, float);
template void linear_forward_ref<double>(double*, const double*, const double*, i64, i64, i64, double);
template void linear_backward_ref<float>(float*, float*, const float*, const float*, const float*, i64,
                                         i64, i64, float);
template void linear_backward_ref<double>(double*, double*, const double*, const double*,
                                          const double*, i64, i64, i64, double);

}  // namespace moe
