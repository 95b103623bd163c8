// Owns the CPU RoPE table and rotation (rotate_half convention, inv_freq = theta^(-2i/D)).
#include "kernels/ref/rope_ref.h"

#include <cmath>

namespace moe {

// contract: C4.attention
template <typename T>
void rope_table_ref(T* cos_t, T* sin_t, i64 L, i64 D, double theta) {
  const i64 half = D / 2;
  for (i64 i = 0; i < half; ++i) {
    // HF: inv_freq = 1 / base ** (arange(0, D, 2).float() / D), then (pos · inv_freq) in fp32.
    const float expo = float(2 * i) / float(D);
    const float inv_freq = 1.0f / std::pow(float(theta), expo);
    for (i64 p = 0; p < L; ++p) {
      const float ang = float(p) * inv_freq;
      cos_t[p * half + i] = T(std::cos(ang));
      sin_t[p * half + i] = T(std::sin(ang));
    }
  }
}

template <typename T>
void rope_apply_ref(T* x, const T* cos_t, const T* sin_t, i64 B, i64 L, i64 NHx, i64 D, RopeDirection dir) {
  const i64 half = D / 2;
  const T sgn = dir == RopeDirection::Forward ? T(1) : T(-1);
#pragma omp parallel for schedule(static)
  for (i64 row = 0; row < B * L; ++row) {
    const i64 pos = row % L;
    const T* c = cos_t + pos * half;
    const T* s = sin_t + pos * half;
    for (i64 h = 0; h < NHx; ++h) {
      T* v = x + row * NHx * D + h * D;
      for (i64 i = 0; i < half; ++i) {
        const T x1 = v[i], x2 = v[i + half];
        const T si = sgn * s[i];
        v[i] = x1 * c[i] - x2 * si;
        v[i + half] = x2 * c[i] + x1 * si;
      }
    }
  }
}

template void rope_table_ref<float>(float*, float*, i64, i64, double);
template void rope_table_ref<double>(double*, double*, i64, i64, double);
template void rope_apply_ref<float>(float*, const float*, const float*, i64, i64, i64, i64, RopeDirection);
template void rope_apply_ref<double>(double*, const double*, const double*, i64, i64, i64, i64, RopeDirection);

}  // namespace moe
