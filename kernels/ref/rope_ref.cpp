// Owns the CPU RoPE table and rotation (rotate_half convention, inv_freq = theta^(-2i/D)).
#include "kernels/ref/rope_ref.h"

#include <cmath>

#include "kernels/math/rope.h"

namespace moe {

// contract: C4.attention, B5
template <typename T>
void rope_table_ref(acc_t<T>* cos_t, acc_t<T>* sin_t, i64 L, i64 D, double theta) {
  using A = acc_t<T>;
  const i64 half = D / 2;
  for (i64 i = 0; i < half; ++i) {
    // HF: inv_freq = 1 / base ** (arange(0, D, 2).float() / D), then (pos · inv_freq) in fp32.
    for (i64 p = 0; p < L; ++p) {
      const float ang = math::rope_angle(p, i, D, theta);
      cos_t[p * half + i] = A(std::cos(ang));
      sin_t[p * half + i] = A(std::sin(ang));
    }
  }
}

template <typename T>
void rope_apply_ref(T* x, const acc_t<T>* cos_t, const acc_t<T>* sin_t, i64 B, i64 L, i64 NHx, i64 D,
                    RopeDirection dir, const int32_t* doc_start) {
  using A = acc_t<T>;
  const i64 half = D / 2;
  const A sgn = dir == RopeDirection::Forward ? A(1) : A(-1);
#pragma omp parallel for schedule(static)
  for (i64 row = 0; row < B * L; ++row) {
    const i64 pos = row % L - (doc_start ? doc_start[row] : 0);
    const A* c = cos_t + pos * half;
    const A* s = sin_t + pos * half;
    for (i64 h = 0; h < NHx; ++h) {
      T* v = x + row * NHx * D + h * D;
      for (i64 i = 0; i < half; ++i) {
        const A x1 = v[i], x2 = v[i + half];
        A o1, o2;
        math::rope_rotate<A>(x1, x2, c[i], sgn * s[i], o1, o2);
        v[i] = T(o1);
        v[i + half] = T(o2);
      }
    }
  }
}

#define MT_ROPE(T)                                                                                               \
  template void rope_table_ref<T>(acc_t<T>*, acc_t<T>*, i64, i64, double);                                       \
  template void rope_apply_ref<T>(T*, const acc_t<T>*, const acc_t<T>*, i64, i64, i64, i64, RopeDirection,       \
                                  const int32_t*);
MT_ROPE(float)
MT_ROPE(double)
MT_ROPE(bf16)
#undef MT_ROPE

}  // namespace moe
