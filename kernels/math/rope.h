// Owns the per-element arithmetic of rotary position embedding (HF rotate_half convention) shared by the CPU kernel
// (kernels/ref/rope_ref.cpp) and the CUDA one (kernels/cuda/rope.cu).
#pragma once
#include <math.h>

#include "core/bf16.h"
#include "core/dims.h"

namespace moe {
namespace math {

// The rotary angle of position pos, frequency i < D/2, in fp32 like HF: inv_freq = 1 / theta^(2i/D),
// angle = pos · inv_freq. [C4.attention, B5]
MT_HD inline float rope_angle(i64 pos, i64 i, i64 D, double theta) {
  const float expo = float(2 * i) / float(D);
  const float inv_freq = 1.0f / powf(float(theta), expo);
  return float(pos) * inv_freq;
}

// The pair (x1, x2) = (x[i], x[i + D/2]) rotated by the angle whose cosine is c and signed sine si
// (si = sin for Forward, −sin for Inverse): (x1·c − x2·si, x2·c + x1·si), in A.
template <typename A>
MT_HD inline void rope_rotate(A x1, A x2, A c, A si, A& o1, A& o2) {
  o1 = x1 * c - x2 * si;
  o2 = x2 * c + x1 * si;
}

}  // namespace math
}  // namespace moe
