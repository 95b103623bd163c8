// Owns the rounded, never-fused IEEE operations (rn::mul, add, sub, div, sqrt) of the shared kernel arithmetic in
// kernels/math/*.h: where the device must compute what the host computes, bit for bit.
#pragma once
#include <cmath>

#include "core/bf16.h"

namespace moe {

// IEEE single/double operations rounded to nearest and never fused: under nvcc the intrinsics keep the compiler
// from contracting a·b + c into one FMA (which rounds once and would change the bits); on the host the build
// targets x86-64-v2 (no FMA), so the plain operators are the same operations the CPU vector lanes do.
namespace rn {
#if defined(__CUDA_ARCH__)
MT_HD inline float mul(float a, float b) { return __fmul_rn(a, b); }
MT_HD inline float add(float a, float b) { return __fadd_rn(a, b); }
MT_HD inline float sub(float a, float b) { return __fsub_rn(a, b); }
MT_HD inline float div(float a, float b) { return __fdiv_rn(a, b); }
MT_HD inline float sqrt(float a) { return __fsqrt_rn(a); }
MT_HD inline double mul(double a, double b) { return __dmul_rn(a, b); }
MT_HD inline double add(double a, double b) { return __dadd_rn(a, b); }
#else
MT_HD inline float mul(float a, float b) { return a * b; }
MT_HD inline float add(float a, float b) { return a + b; }
MT_HD inline float sub(float a, float b) { return a - b; }
MT_HD inline float div(float a, float b) { return a / b; }
MT_HD inline float sqrt(float a) { return std::sqrt(a); }
MT_HD inline double mul(double a, double b) { return a * b; }
MT_HD inline double add(double a, double b) { return a + b; }
#endif
}  // namespace rn

}  // namespace moe
