// Owns the CPU SwiGLU: silu(a) = a·sigmoid(a). fp32 runs W lanes at a time with a vector exp, W = 16 (AVX-512F),
// 8 (AVX2) or 4 (SSE) by the CPU at run time; fp64 (gradient checks) stays scalar with std::exp.
#include "kernels/ref/swiglu_ref.h"
#include "kernels/ref/vec_exp.h"
// The shared math functions take and return W-lane vectors by value; they are always inlined, so no call ABI is
// involved and GCC's note about the AVX vector-return ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#include "kernels/math/swiglu.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace moe {

namespace {

using vec::Lanes;
using vec::vexp;

// Lanes [i, i + W) ∩ [i, n) of p (padding lanes 0), and back.
template <int W>
__attribute__((always_inline)) inline void load(typename Lanes<W>::F& v, const float* p, i64 i, i64 n) {
  v = typename Lanes<W>::F{};
  if (i + W <= n)
    std::memcpy(&v, p + i, sizeof v);
  else
    for (i64 u = 0; i + u < n; ++u) v[u] = p[i + u];
}
template <int W>
__attribute__((always_inline)) inline void store(float* p, i64 i, i64 n, const typename Lanes<W>::F& v) {
  if (i + W <= n)
    std::memcpy(p + i, &v, sizeof v);
  else
    for (i64 u = 0; i + u < n; ++u) p[i + u] = v[u];
}

template <int W>
__attribute__((always_inline)) inline void fwd_span(float* h, const float* a, const float* b, i64 n) {
  typedef typename Lanes<W>::F F;
  for (i64 i = 0; i < n; i += W) {
    F av, bv;
    load<W>(av, a, i, n);
    load<W>(bv, b, i, n);
    F e = -av;
    vexp<W>(e);
    const F s = math::sigmoid_from_exp_neg(e);
    store<W>(h, i, n, math::swiglu_h(av, bv, s));
  }
}

template <int W>
__attribute__((always_inline)) inline void bwd_span(float* da, float* db, const float* dh, const float* a,
                                                    const float* b, i64 n) {
  typedef typename Lanes<W>::F F;
  for (i64 i = 0; i < n; i += W) {
    F av, bv, dhv;
    load<W>(av, a, i, n);
    load<W>(bv, b, i, n);
    load<W>(dhv, dh, i, n);
    F e = -av;
    vexp<W>(e);
    const F s = math::sigmoid_from_exp_neg(e);
    store<W>(db, i, n, math::swiglu_db(dhv, av, s));
    store<W>(da, i, n, math::swiglu_da(dhv, av, bv, s));
  }
}

using FwdFn = void (*)(float*, const float*, const float*, i64);
using BwdFn = void (*)(float*, float*, const float*, const float*, const float*, i64);

void fwd4(float* h, const float* a, const float* b, i64 n) { fwd_span<4>(h, a, b, n); }
void bwd4(float* da, float* db, const float* dh, const float* a, const float* b, i64 n) {
  bwd_span<4>(da, db, dh, a, b, n);
}
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) void fwd8(float* h, const float* a, const float* b, i64 n) { fwd_span<8>(h, a, b, n); }
__attribute__((target("avx2"))) void bwd8(float* da, float* db, const float* dh, const float* a, const float* b, i64 n) {
  bwd_span<8>(da, db, dh, a, b, n);
}
__attribute__((target("avx512f"))) void fwd16(float* h, const float* a, const float* b, i64 n) {
  fwd_span<16>(h, a, b, n);
}
__attribute__((target("avx512f"))) void bwd16(float* da, float* db, const float* dh, const float* a, const float* b,
                                              i64 n) {
  bwd_span<16>(da, db, dh, a, b, n);
}
int lanes() {
  static const int w = __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx2") ? 8 : 4;
  return w;
}
FwdFn fwd_fn() { return lanes() == 16 ? fwd16 : lanes() == 8 ? fwd8 : fwd4; }
BwdFn bwd_fn() { return lanes() == 16 ? bwd16 : lanes() == 8 ? bwd8 : bwd4; }
#else
FwdFn fwd_fn() { return fwd4; }
BwdFn bwd_fn() { return bwd4; }
#endif

// Elements per parallel work item (a multiple of every W: lanes line up the same at any thread count).
constexpr i64 kSpan = 4096;

}  // namespace

// contract: C4.expert
template <typename T>
void swiglu_forward_ref(T* h, const T* a, const T* b, i64 N) {
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T s = math::sigmoid_from_exp_neg<T>(std::exp(-a[n]));
    h[n] = math::swiglu_h<T>(a[n], b[n], s);
  }
}

template <>
void swiglu_forward_ref<float>(float* h, const float* a, const float* b, i64 N) {
  const FwdFn f = fwd_fn();
  const i64 nb = (N + kSpan - 1) / kSpan;
#pragma omp parallel for schedule(static)
  for (i64 k = 0; k < nb; ++k) {
    const i64 o = k * kSpan;
    f(h + o, a + o, b + o, N - o < kSpan ? N - o : kSpan);
  }
}

template <typename T>
void swiglu_backward_ref(T* da, T* db, const T* dh, const T* a, const T* b, i64 N) {
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T s = math::sigmoid_from_exp_neg<T>(std::exp(-a[n]));
    db[n] = math::swiglu_db<T>(dh[n], a[n], s);
    da[n] = math::swiglu_da<T>(dh[n], a[n], b[n], s);
  }
}

template <>
void swiglu_backward_ref<float>(float* da, float* db, const float* dh, const float* a, const float* b, i64 N) {
  const BwdFn f = bwd_fn();
  const i64 nb = (N + kSpan - 1) / kSpan;
#pragma omp parallel for schedule(static)
  for (i64 k = 0; k < nb; ++k) {
    const i64 o = k * kSpan;
    f(da + o, db + o, dh + o, a + o, b + o, N - o < kSpan ? N - o : kSpan);
  }
}

// bf16: spans of kChunk elements widened to fp32 on the stack, run through the fp32 code, rounded once.
// contract: B8
constexpr i64 kChunk = 256;  // a multiple of every W

template <>
void swiglu_forward_ref<bf16>(bf16* h, const bf16* a, const bf16* b, i64 N) {
  const FwdFn f = fwd_fn();
  const i64 nb = (N + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (i64 k = 0; k < nb; ++k) {
    const i64 o = k * kChunk, n = N - o < kChunk ? N - o : kChunk;
    float af[kChunk], bf[kChunk], hf[kChunk];
    for (i64 i = 0; i < n; ++i) af[i] = a[o + i], bf[i] = b[o + i];
    f(hf, af, bf, n);
    for (i64 i = 0; i < n; ++i) h[o + i] = bf16(hf[i]);
  }
}

template <>
void swiglu_backward_ref<bf16>(bf16* da, bf16* db, const bf16* dh, const bf16* a, const bf16* b, i64 N) {
  const BwdFn f = bwd_fn();
  const i64 nb = (N + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (i64 k = 0; k < nb; ++k) {
    const i64 o = k * kChunk, n = N - o < kChunk ? N - o : kChunk;
    float af[kChunk], bf[kChunk], dhf[kChunk], daf[kChunk], dbf[kChunk];
    for (i64 i = 0; i < n; ++i) af[i] = a[o + i], bf[i] = b[o + i], dhf[i] = dh[o + i];
    f(daf, dbf, dhf, af, bf, n);
    for (i64 i = 0; i < n; ++i) da[o + i] = bf16(daf[i]), db[o + i] = bf16(dbf[i]);
  }
}

template void swiglu_forward_ref<double>(double*, const double*, const double*, i64);
template void swiglu_backward_ref<double>(double*, double*, const double*, const double*, const double*, i64);

}  // namespace moe
