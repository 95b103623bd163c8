// Owns RMSNorm forward/backward on the CPU [C4.rmsnorm]; twin of kernels/rmsnorm.cu.
#pragma once
#include "core/bf16.h"
#include "core/dims.h"

namespace moe {

// y[N,C] = w[C] · x / sqrt(mean(x²) + eps); rstd[N] saved for backward. Also used per head (q_norm/k_norm).
// Sum of squares in double; rstd in acc_t<T>; y = T(w · (x · rstd)) computed in acc_t<T> (bf16: one rounding, B4).
// The gain w is acc_t<T> (fp32 for bf16: norm gains are read as fp32, DESIGN §8).
template <typename T>
void rmsnorm_forward_ref(T* y, acc_t<T>* rstd, const T* x, const acc_t<T>* w, i64 N, i64 C, double eps);

// dx[N,C] = (overwrite) ; dw[C] += Σ_rows dy · x̂ (in acc_t<T>: fp32 for bf16). dx computed in double, then
// rounded to T (bf16: via its fp32 value, one bf16 rounding).
template <typename T>
void rmsnorm_backward_ref(T* dx, acc_t<T>* dw, const T* dy, const T* x, const acc_t<T>* w, const acc_t<T>* rstd,
                          i64 N, i64 C);

}  // namespace moe
