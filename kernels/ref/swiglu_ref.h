// Owns the SwiGLU activation silu(a) ⊙ b forward/backward on the CPU [C4.expert]; twin of kernels/swiglu.cu.
#pragma once
#include "core/bf16.h"
#include "core/dims.h"

namespace moe {

// h[n] = silu(a[n]) · b[n], n < N (a = W1·x gate branch, b = W3·x up branch). T = float, double or bf16 (bf16:
// computed in fp32 from the bf16 a, b by the fp32 code, each output rounded once, B8).
template <typename T>
void swiglu_forward_ref(T* h, const T* a, const T* b, i64 N);

// da, db overwritten from dh.
template <typename T>
void swiglu_backward_ref(T* da, T* db, const T* dh, const T* a, const T* b, i64 N);

}  // namespace moe
