// Owns the CPU attention: cblas GEMMs per (batch, head) on causal row/column blocks (the blocks above the diagonal,
// and with a sliding window those left of it, are skipped), fp32 softmax. OpenMP tasks issue their own GEMMs, which OpenBLAS (OpenMP build) runs single-threaded
// inside the parallel region: at these sizes that is several times faster than a serial loop of threaded GEMMs.
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/vec_exp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/ref/gemm_ref.h"

namespace moe {

namespace {

// Rows (and columns) per causal block: block (r, c) with c > r is fully masked and never computed.
constexpr i64 kBlock = 64;

using vec::Lanes;
using vec::vexp;

// Row i of a score block (columns 0..i valid) → causal softmax in place; columns i+1..L-1 set to 0.
// The sum has a fixed order (W lane sums, then the lanes in order): the same bits at any thread count.
template <int W>
__attribute__((always_inline)) inline void softmax_span(float* Pi, i64 i, i64 L) {
  typedef typename Lanes<W>::F F;
  const float ninf = -std::numeric_limits<float>::infinity();
  const i64 n = i + 1, nf = n / W * W;  // full vectors, then one padded tail vector (lanes past n: −inf)
  F tail = F{} + ninf;
  for (i64 u = 0; nf + u < n; ++u) tail[u] = Pi[nf + u];
  F mv = tail, x;
  for (i64 j = 0; j < nf; j += W) {
    std::memcpy(&x, Pi + j, sizeof x);
    mv = x > mv ? x : mv;
  }
  float mx = mv[0];
  for (int u = 1; u < W; ++u) mx = mv[u] > mx ? mv[u] : mx;
  F acc = tail - mx;
  vexp<W>(acc);  // exp(−inf) = 0 in the padding lanes
  for (i64 u = 0; nf + u < n; ++u) Pi[nf + u] = acc[u];
  for (i64 j = 0; j < nf; j += W) {
    std::memcpy(&x, Pi + j, sizeof x);
    x -= mx;
    vexp<W>(x);
    std::memcpy(Pi + j, &x, sizeof x);
    acc += x;
  }
  float sum = acc[0];
  for (int u = 1; u < W; ++u) sum += acc[u];
  const float inv = 1.f / sum;
  for (i64 j = 0; j < n; ++j) Pi[j] *= inv;
  std::fill(Pi + n, Pi + L, 0.f);
}

using SoftmaxFn = void (*)(float*, i64, i64);
void softmax4(float* Pi, i64 i, i64 L) { softmax_span<4>(Pi, i, L); }
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) void softmax8(float* Pi, i64 i, i64 L) { softmax_span<8>(Pi, i, L); }
__attribute__((target("avx512f"))) void softmax16(float* Pi, i64 i, i64 L) { softmax_span<16>(Pi, i, L); }
// W = 16 (AVX-512F), 8 (AVX2) or 4 (SSE) by the CPU at run time.
SoftmaxFn softmax_fn() {
  static const SoftmaxFn f = __builtin_cpu_supports("avx512f") ? softmax16
                             : __builtin_cpu_supports("avx2")  ? softmax8
                                                               : softmax4;
  return f;
}
#else
SoftmaxFn softmax_fn() { return softmax4; }
#endif

// Row i: softmax over columns lo..i in place, every other column of 0..L-1 set to 0 (lo = 0: plain causal).
inline void softmax_row(float* Pi, i64 lo, i64 i, i64 L) {
  softmax_fn()(Pi + lo, i - lo, L - lo);
  std::fill(Pi, Pi + lo, 0.f);
}
inline void softmax_row(double* Pi, i64 lo, i64 i, i64 L) {
  double mx = -std::numeric_limits<double>::infinity();
  for (i64 j = lo; j <= i; ++j) mx = Pi[j] > mx ? Pi[j] : mx;
  double sum = 0;
  for (i64 j = lo; j <= i; ++j) sum += (Pi[j] = std::exp(Pi[j] - mx));
  const double inv = 1.0 / sum;
  for (i64 j = lo; j <= i; ++j) Pi[j] *= inv;
  std::fill(Pi, Pi + lo, 0.0);
  std::fill(Pi + i + 1, Pi + L, 0.0);
}

// First key position query i sees: i − window + 1 with a sliding window, else 0.
inline i64 first_key(i64 i, i64 window) { return window > 0 ? std::max<i64>(0, i - window + 1) : 0; }

}  // namespace

// contract: C4.attention
template <typename T>
void attention_forward_ref(T* out, T* probs, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH,
                           i64 NKV, i64 D, i64 window) {
  const i64 rep = NH / NKV, qs = NH * D, ks = NKV * D;
  const T scale = T(1.0 / std::sqrt(double(D)));
  const i64 nblk = (L + kBlock - 1) / kBlock;
  // Tasks (row block, batch, head), the longest row blocks first; each writes its own rows of out and probs.
#pragma omp parallel for collapse(3) schedule(dynamic, 1)
  for (i64 blk = nblk - 1; blk >= 0; --blk)
    for (i64 b = 0; b < B; ++b)
      for (i64 h = 0; h < NH; ++h) {
        const i64 kvh = h / rep, r0 = blk * kBlock, r1 = std::min(L, r0 + kBlock), m = r1 - r0;
        const T* Q = q + b * L * qs + h * D;
        const T* K = k + b * L * ks + kvh * D;
        const T* V = v + b * L * ks + kvh * D;
        T* P = probs + (b * NH + h) * L * L;
        // Keys c0..r1-1 reach this row block: right of the diagonal all is masked, left of c0 the window.
        const i64 c0 = first_key(r0, window), n = r1 - c0;
        // S[r0:r1, c0:r1] = scale · Q[r0:r1] · K[c0:r1]ᵀ
        gemm_ref<T>(P + r0 * L + c0, Q + r0 * qs, K + c0 * ks, m, n, D, Trans::No, Trans::Yes, qs, ks, L, scale,
                    T(0));
        for (i64 i = r0; i < r1; ++i) softmax_row(P + i * L, first_key(i, window), i, L);
        // O[r0:r1] = P[r0:r1, c0:r1] · V[c0:r1]
        gemm_ref<T>(out + (b * L + r0) * qs + h * D, P + r0 * L + c0, V + c0 * ks, m, D, n, Trans::No, Trans::No, L,
                    ks, qs, T(1), T(0));
      }
}

template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                            const T* probs, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window) {
  const i64 rep = NH / NKV, qs = NH * D, ks = NKV * D;
  const T scale = T(1.0 / std::sqrt(double(D)));
  // One task per (batch, kv head): the query heads of a group write the same dk/dv rows.
#pragma omp parallel for collapse(2) schedule(static)
  for (i64 b = 0; b < B; ++b)
    for (i64 kvh = 0; kvh < NKV; ++kvh) {
      thread_local std::vector<T> scratch;  // dP, then dS in place: [L, L], grown once per thread
      if (scratch.size() < size_t(L * L)) scratch.resize(size_t(L * L));
      T* dS = scratch.data();
      const T* K = k + b * L * ks + kvh * D;
      const T* V = v + b * L * ks + kvh * D;
      T* dK = dk + b * L * ks + kvh * D;
      T* dV = dv + b * L * ks + kvh * D;
      for (i64 h = kvh * rep; h < (kvh + 1) * rep; ++h) {
        const T* P = probs + (b * NH + h) * L * L;
        const T* Q = q + b * L * qs + h * D;
        const T* dO = dout + b * L * qs + h * D;
        T* dQ = dq + b * L * qs + h * D;
        for (i64 r0 = 0; r0 < L; r0 += kBlock) {
          const i64 r1 = std::min(L, r0 + kBlock), m = r1 - r0, k0 = first_key(r0, window), nk = r1 - k0;
          // dP[r0:r1, k0:r1] = dO[r0:r1] · V[k0:r1]ᵀ
          gemm_ref<T>(dS + r0 * L + k0, dO + r0 * qs, V + k0 * ks, m, nk, D, Trans::No, Trans::Yes, qs, ks, L, T(1),
                      T(0));
          // dS_ij = P_ij (dP_ij − Σ_j P_ij dP_ij) · scale for lo_i ≤ j ≤ i; 0 elsewhere (0..r1-1)
          for (i64 i = r0; i < r1; ++i) {
            const T* Pi = P + i * L;
            T* dSi = dS + i * L;
            const i64 lo = first_key(i, window);
            T rowdot = 0;
#pragma omp simd reduction(+ : rowdot)
            for (i64 j = lo; j <= i; ++j) rowdot += Pi[j] * dSi[j];
#pragma omp simd
            for (i64 j = lo; j <= i; ++j) dSi[j] = Pi[j] * (dSi[j] - rowdot) * scale;
            std::fill(dSi, dSi + lo, T(0));
            std::fill(dSi + i + 1, dSi + r1, T(0));
          }
          // dQ[r0:r1] = dS[r0:r1, k0:r1] · K[k0:r1]
          gemm_ref<T>(dQ + r0 * qs, dS + r0 * L + k0, K + k0 * ks, m, D, nk, Trans::No, Trans::No, L, ks, qs, T(1),
                      T(0));
        }
        // Column block c0:c1 of dV/dK gets the rows that see it, c0..c1+window-2 (all rows below with no window):
        // P and dS are zero for rows above the block and past the window.
        const T beta = h == kvh * rep ? T(0) : T(1);
        for (i64 c0 = 0; c0 < L; c0 += kBlock) {
          const i64 c1 = std::min(L, c0 + kBlock), n = c1 - c0;
          const i64 rows = (window > 0 ? std::min(L, c1 + window - 1) : L) - c0;
          // dV[c0:c1] (+)= P[c0:L, c0:c1]ᵀ · dO[c0:L] ; dK[c0:c1] (+)= dS[c0:L, c0:c1]ᵀ · Q[c0:L]
          gemm_ref<T>(dV + c0 * ks, P + c0 * L + c0, dO + c0 * qs, n, D, rows, Trans::Yes, Trans::No, L, qs, ks,
                      T(1), beta);
          gemm_ref<T>(dK + c0 * ks, dS + c0 * L + c0, Q + c0 * qs, n, D, rows, Trans::Yes, Trans::No, L, qs, ks,
                      T(1), beta);
        }
      }
    }
}

template void attention_forward_ref<float>(float*, float*, const float*, const float*, const float*, i64,
                                           i64, i64, i64, i64, i64);
template void attention_forward_ref<double>(double*, double*, const double*, const double*, const double*,
                                            i64, i64, i64, i64, i64, i64);
template void attention_backward_ref<float>(float*, float*, float*, const float*, const float*,
                                            const float*, const float*, const float*, i64, i64, i64, i64,
                                            i64, i64);
template void attention_backward_ref<double>(double*, double*, double*, const double*, const double*,
                                             const double*, const double*, const double*, i64, i64, i64,
                                             i64, i64, i64);

}  // namespace moe
