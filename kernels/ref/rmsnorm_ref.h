// Owns RMSNorm forward/backward on the CPU [C4.rmsnorm]; twin of kernels/rmsnorm.cu.
#pragma once
#include "core/dims.h"

namespace moe {

// y[N,C] = w[C] · x / sqrt(mean(x²) + eps); rstd[N] saved for backward. Also used per head (q_norm/k_norm).
template <typename T>
void rmsnorm_forward_ref(T* y, T* rstd, const T* x, const T* w, i64 N, i64 C, double eps);

// dx[N,C] = (overwrite) ; dw[C] += Σ_rows dy · x̂.
template <typename T>
void rmsnorm_backward_ref(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, i64 N, i64 C);

}  // namespace moe
