// Owns the CPU attention, flash-style: per (row block, batch, head) the scores of 64 query rows against the keys they
// see go to a per-thread workspace block, are softmaxed there, and only out and the log-sum-exp are kept; backward
// recomputes the probabilities from the log-sum-exp. cblas GEMMs per block (blocks above the diagonal, and with a
// sliding window those left of it, are skipped), fp32 softmax. OpenMP tasks issue their own GEMMs, which OpenBLAS
// (OpenMP build) runs single-threaded inside the parallel region. bf16 runs the fp32 path on fp32 copies of its inputs.
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/vec_exp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/math/attention.h"
#include "kernels/ref/gemm_ref.h"

namespace moe {

namespace {

// Rows (and columns) per causal block: block (r, c) with c > r is fully masked and never computed.
constexpr i64 kBlock = 64;

using vec::Lanes;
using vec::vexp;

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Row i of a score block (columns 0..i valid) → causal softmax in place; columns i+1..L-1 set to 0. Returns the
// row's log-sum-exp max + log Σ exp(x − max). The sum has a fixed order (W lane sums, then the lanes in order): the
// same bits at any thread count.
template <int W>
__attribute__((always_inline)) inline float softmax_span(float* Pi, i64 i, i64 L) {
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
  return math::attn_lse(mx, sum);
}

// x[j] ← exp(x[j] − sub) for j < n (the probabilities recomputed from the log-sum-exp).
template <int W>
__attribute__((always_inline)) inline void exp_shift_span(float* x, i64 n, float sub) {
  typedef typename Lanes<W>::F F;
  const i64 nf = n / W * W;
  F y;
  for (i64 j = 0; j < nf; j += W) {
    std::memcpy(&y, x + j, sizeof y);
    y -= sub;
    vexp<W>(y);
    std::memcpy(x + j, &y, sizeof y);
  }
  if (nf == n) return;
  y = F{};
  for (i64 u = 0; nf + u < n; ++u) y[u] = x[nf + u] - sub;
  vexp<W>(y);
  for (i64 u = 0; nf + u < n; ++u) x[nf + u] = y[u];
}

using SoftmaxFn = float (*)(float*, i64, i64);
using ExpShiftFn = void (*)(float*, i64, float);
float softmax4(float* Pi, i64 i, i64 L) { return softmax_span<4>(Pi, i, L); }
void exp_shift4(float* x, i64 n, float sub) { exp_shift_span<4>(x, n, sub); }
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) float softmax8(float* Pi, i64 i, i64 L) { return softmax_span<8>(Pi, i, L); }
__attribute__((target("avx512f"))) float softmax16(float* Pi, i64 i, i64 L) { return softmax_span<16>(Pi, i, L); }
__attribute__((target("avx2"))) void exp_shift8(float* x, i64 n, float sub) { exp_shift_span<8>(x, n, sub); }
__attribute__((target("avx512f"))) void exp_shift16(float* x, i64 n, float sub) { exp_shift_span<16>(x, n, sub); }
// W = 16 (AVX-512F), 8 (AVX2) or 4 (SSE) by the CPU at run time.
int lanes() {
  static const int w = __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx2") ? 8 : 4;
  return w;
}
SoftmaxFn softmax_fn() { return lanes() == 16 ? softmax16 : lanes() == 8 ? softmax8 : softmax4; }
ExpShiftFn exp_shift_fn() { return lanes() == 16 ? exp_shift16 : lanes() == 8 ? exp_shift8 : exp_shift4; }
#else
SoftmaxFn softmax_fn() { return softmax4; }
ExpShiftFn exp_shift_fn() { return exp_shift4; }
#endif

// Row of n columns: softmax over columns lo..i in place, every other column set to 0; returns the log-sum-exp.
inline float softmax_row(float* Pi, i64 lo, i64 i, i64 n) {
  const float lse = softmax_fn()(Pi + lo, i - lo, n - lo);
  std::fill(Pi, Pi + lo, 0.f);
  return lse;
}
inline double softmax_row(double* Pi, i64 lo, i64 i, i64 n) {
  double mx = -std::numeric_limits<double>::infinity();
  for (i64 j = lo; j <= i; ++j) mx = Pi[j] > mx ? Pi[j] : mx;
  double sum = 0;
  for (i64 j = lo; j <= i; ++j) sum += (Pi[j] = std::exp(Pi[j] - mx));
  const double inv = 1.0 / sum;
  for (i64 j = lo; j <= i; ++j) Pi[j] *= inv;
  std::fill(Pi, Pi + lo, 0.0);
  std::fill(Pi + i + 1, Pi + n, 0.0);
  return mx + std::log(sum);
}

// Row of n scores: P = exp(s − lse) on columns lo..i, 0 elsewhere.
inline void probs_row(float* Si, i64 lo, i64 i, i64 n, float lse) {
  exp_shift_fn()(Si + lo, i - lo + 1, lse);
  std::fill(Si, Si + lo, 0.f);
  std::fill(Si + i + 1, Si + n, 0.f);
}
inline void probs_row(double* Si, i64 lo, i64 i, i64 n, double lse) {
  for (i64 j = lo; j <= i; ++j) Si[j] = std::exp(Si[j] - lse);
  std::fill(Si, Si + lo, 0.0);
  std::fill(Si + i + 1, Si + n, 0.0);
}

using i32p_t = const int32_t*;
// First key position query i sees: i − window + 1 with a sliding window, else 0; not before its document's start
// with packed documents (ds = the sequence's doc_start row, nondecreasing in i, so a block's first row has the lowest).
inline i64 key_lo(i64 i, i64 window, i32p_t ds) {
  const i64 w = math::attn_first_key(i, window);
  return ds && i64(ds[i]) > w ? i64(ds[i]) : w;
}

// dS = P (dP − D_i) scale: the shared fp32 formula; double (gradient checks) the same in double.
inline float dscore(float p, float dp, float Di, float scale) { return math::attn_dscore(p, dp, Di, scale); }
inline double dscore(double p, double dp, double Di, double scale) { return p * (dp - Di) * scale; }

// Columns of a score block (its leading dimension): a row block of kBlock rows sees at most kBlock + window − 1 keys.
inline i64 block_cols(i64 L, i64 window) { return window > 0 ? std::min(L, kBlock + window - 1) : L; }

// Elements of one thread's workspace slot (a multiple of 16: slots stay 64-byte aligned for float).
template <typename T>
i64 slot_elems(i64 L, i64 D, i64 window) {
  i64 n = 2 * kBlock * block_cols(L, window);
  if (!std::is_same<T, acc_t<T>>::value) n += 6 * L * D + kBlock * D;
  return (n + 15) / 16 * 16;
}

// dst[r·ldd + c] = src[r·lds + c] for r < rows, c < cols (T → acc_t<T>, exact).
template <typename C, typename T>
void widen(C* dst, i64 ldd, const T* src, i64 lds, i64 rows, i64 cols) {
  for (i64 r = 0; r < rows; ++r)
    for (i64 c = 0; c < cols; ++c) dst[r * ldd + c] = C(src[r * lds + c]);
}
// dst[r·ldd + c] = T(src[r·lds + c]): one rounding per element.
template <typename T, typename C>
void narrow(T* dst, i64 ldd, const C* src, i64 lds, i64 rows, i64 cols) {
  for (i64 r = 0; r < rows; ++r)
    for (i64 c = 0; c < cols; ++c) dst[r * ldd + c] = T(src[r * lds + c]);
}

}  // namespace

template <typename T>
i64 attention_workspace_elems(i64 L, i64 D, i64 window) {
  return slot_elems<T>(L, D, window) * max_threads();
}

// contract: C4.attention, B6
template <typename T>
void attention_forward_ref(T* out, acc_t<T>* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH,
                           i64 NKV, i64 D, i64 window, const int32_t* doc_start, acc_t<T>* ws) {
  using C = acc_t<T>;
  constexpr bool kWiden = !std::is_same<T, C>::value;  // bf16: fp32 copies of q, k, v rows in the workspace
  const i64 rep = NH / NKV, qs = NH * D, ks = NKV * D;
  const C scale = C(1.0 / std::sqrt(double(D)));
  const i64 nblk = (L + kBlock - 1) / kBlock, ld = block_cols(L, window), slot = slot_elems<T>(L, D, window);
  // Tasks (row block, batch, head), the longest row blocks first; each writes its own rows of out and lse.
#pragma omp parallel for collapse(3) schedule(dynamic, 1)
  for (i64 blk = nblk - 1; blk >= 0; --blk)
    for (i64 b = 0; b < B; ++b)
      for (i64 h = 0; h < NH; ++h) {
        C* S = ws + thread_id() * slot;  // [m, ld]: scores, then probabilities
        const i64 kvh = h / rep, r0 = blk * kBlock, r1 = std::min(L, r0 + kBlock), m = r1 - r0;
        // Keys c0..r1-1 reach this row block: right of the diagonal all is masked, left of c0 the window.
        const i32p_t ds = doc_start ? doc_start + b * L : nullptr;
        const i64 c0 = key_lo(r0, window, ds), n = r1 - c0;
        const T* Q = q + (b * L + r0) * qs + h * D;
        const T* K = k + (b * L + c0) * ks + kvh * D;
        const T* V = v + (b * L + c0) * ks + kvh * D;
        T* O = out + (b * L + r0) * qs + h * D;
        const C *Qc, *Kc, *Vc;
        i64 ldq = qs, ldk = ks;
        C* Oc = nullptr;
        if constexpr (kWiden) {
          C* X = S + 2 * kBlock * ld;
          widen(X, D, Q, qs, m, D);
          widen(X + L * D, D, K, ks, n, D);
          widen(X + 2 * L * D, D, V, ks, n, D);
          Qc = X, Kc = X + L * D, Vc = X + 2 * L * D, Oc = X + 6 * L * D;
          ldq = ldk = D;
        } else {
          Qc = Q, Kc = K, Vc = V;
        }
        // S[:, 0:n] = scale · Q[r0:r1] · K[c0:r1]ᵀ
        gemm_ref<C>(S, Qc, Kc, m, n, D, Trans::No, Trans::Yes, ldq, ldk, ld, scale, C(0));
        C* lrow = lse + (b * NH + h) * L;
        for (i64 i = r0; i < r1; ++i) lrow[i] = softmax_row(S + (i - r0) * ld, key_lo(i, window, ds) - c0, i - c0, n);
        if constexpr (kWiden) {
          for (i64 i = 0; i < m; ++i)
            for (i64 j = 0; j < n; ++j) S[i * ld + j] = C(T(S[i * ld + j]));  // P rounded to T before P·V
          gemm_ref<C>(Oc, S, Vc, m, D, n, Trans::No, Trans::No, ld, D, D, C(1), C(0));
          narrow(O, qs, Oc, D, m, D);
        } else {
          // O[r0:r1] = P[:, 0:n] · V[c0:r1]
          gemm_ref<C>(O, S, Vc, m, D, n, Trans::No, Trans::No, ld, ldk, qs, C(1), C(0));
        }
      }
}

template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* out, const acc_t<T>* lse, const T* q,
                            const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window,
                            const int32_t* doc_start, acc_t<T>* ws) {
  using C = acc_t<T>;
  constexpr bool kWiden = !std::is_same<T, C>::value;
  const i64 rep = NH / NKV, qs = NH * D, ks = NKV * D;
  const C scale = C(1.0 / std::sqrt(double(D)));
  const i64 ld = block_cols(L, window), slot = slot_elems<T>(L, D, window);
  // One task per (batch, kv head): the query heads of a group write the same dk/dv rows.
#pragma omp parallel for collapse(2) schedule(static)
  for (i64 b = 0; b < B; ++b)
    for (i64 kvh = 0; kvh < NKV; ++kvh) {
      C* S = ws + thread_id() * slot;  // [kBlock, ld]: scores, then P
      C* dS = S + kBlock * ld;          // [kBlock, ld]: dP, then dS in place
      C* X = dS + kBlock * ld;          // bf16 only: fp32 copies and accumulators, [L, D] each
      const i32p_t ds = doc_start ? doc_start + b * L : nullptr;
      const T* K = k + b * L * ks + kvh * D;
      const T* V = v + b * L * ks + kvh * D;
      T* dK = dk + b * L * ks + kvh * D;
      T* dV = dv + b * L * ks + kvh * D;
      const C *Kc, *Vc;
      C *dKc, *dVc, *dQc = nullptr;
      i64 ldk = ks;
      if constexpr (kWiden) {
        widen(X, D, K, ks, L, D);
        widen(X + L * D, D, V, ks, L, D);
        Kc = X, Vc = X + L * D, dKc = X + 4 * L * D, dVc = X + 5 * L * D, dQc = X + 6 * L * D;
        ldk = D;
        std::fill(dKc, dKc + 2 * L * D, C(0));
      } else {
        Kc = K, Vc = V, dKc = dK, dVc = dV;
        for (i64 r = 0; r < L; ++r) {
          std::fill(dK + r * ks, dK + r * ks + D, T(0));
          std::fill(dV + r * ks, dV + r * ks + D, T(0));
        }
      }
      for (i64 h = kvh * rep; h < (kvh + 1) * rep; ++h) {
        const T* Q = q + b * L * qs + h * D;
        const T* dO = dout + b * L * qs + h * D;
        const T* O = out + b * L * qs + h * D;
        const C* lrow = lse + (b * NH + h) * L;
        T* dQ = dq + b * L * qs + h * D;
        const C *Qc, *dOc;
        i64 ldq = qs;
        if constexpr (kWiden) {
          widen(X + 2 * L * D, D, Q, qs, L, D);
          widen(X + 3 * L * D, D, dO, qs, L, D);
          Qc = X + 2 * L * D, dOc = X + 3 * L * D;
          ldq = D;
        } else {
          Qc = Q, dOc = dO;
        }
        for (i64 r0 = 0; r0 < L; r0 += kBlock) {
          const i64 r1 = std::min(L, r0 + kBlock), m = r1 - r0, k0 = key_lo(r0, window, ds), nk = r1 - k0;
          // S = scale · Q[r0:r1] · K[k0:r1]ᵀ (the forward's scores); dP = dO[r0:r1] · V[k0:r1]ᵀ
          gemm_ref<C>(S, Qc + r0 * ldq, Kc + k0 * ldk, m, nk, D, Trans::No, Trans::Yes, ldq, ldk, ld, scale, C(0));
          gemm_ref<C>(dS, dOc + r0 * ldq, Vc + k0 * ldk, m, nk, D, Trans::No, Trans::Yes, ldq, ldk, ld, C(1), C(0));
          // P_ij = exp(s_ij − lse_i); dS_ij = P_ij (dP_ij − D_i) · scale, D_i = Σ_d dO_id O_id; 0 outside lo_i..i.
          for (i64 i = r0; i < r1; ++i) {
            C* Si = S + (i - r0) * ld;
            C* dSi = dS + (i - r0) * ld;
            const i64 lo = key_lo(i, window, ds) - k0, hi = i - k0;
            C Di = 0;
            for (i64 d = 0; d < D; ++d) Di += C(dO[i * qs + d]) * C(O[i * qs + d]);
            probs_row(Si, lo, hi, nk, lrow[i]);
#pragma omp simd
            for (i64 j = lo; j <= hi; ++j) dSi[j] = dscore(Si[j], dSi[j], Di, scale);
            std::fill(dSi, dSi + lo, C(0));
            std::fill(dSi + hi + 1, dSi + nk, C(0));
          }
          // dQ[r0:r1] = dS · K[k0:r1]
          if constexpr (kWiden) {
            gemm_ref<C>(dQc, dS, Kc + k0 * ldk, m, D, nk, Trans::No, Trans::No, ld, ldk, D, C(1), C(0));
            narrow(dQ + r0 * qs, qs, dQc, D, m, D);
          } else {
            gemm_ref<C>(dQ + r0 * qs, dS, Kc + k0 * ldk, m, D, nk, Trans::No, Trans::No, ld, ldk, qs, C(1), C(0));
          }
          // dV[k0:r1] += Pᵀ · dO[r0:r1] ; dK[k0:r1] += dSᵀ · Q[r0:r1]
          gemm_ref<C>(dVc + k0 * ldk, S, dOc + r0 * ldq, nk, D, m, Trans::Yes, Trans::No, ld, ldq, ldk, C(1), C(1));
          gemm_ref<C>(dKc + k0 * ldk, dS, Qc + r0 * ldq, nk, D, m, Trans::Yes, Trans::No, ld, ldq, ldk, C(1), C(1));
        }
      }
      if constexpr (kWiden) {
        narrow(dK, ks, dKc, D, L, D);
        narrow(dV, ks, dVc, D, L, D);
      }
    }
}

#define MT_ATTENTION(T)                                                                                              \
  template i64 attention_workspace_elems<T>(i64, i64, i64);                                                          \
  template void attention_forward_ref<T>(T*, acc_t<T>*, const T*, const T*, const T*, i64, i64, i64, i64, i64, i64, \
                                         const int32_t*, acc_t<T>*);                                                 \
  template void attention_backward_ref<T>(T*, T*, T*, const T*, const T*, const acc_t<T>*, const T*, const T*,      \
                                          const T*, i64, i64, i64, i64, i64, i64, const int32_t*, acc_t<T>*);
MT_ATTENTION(float)
MT_ATTENTION(double)
MT_ATTENTION(bf16)
#undef MT_ATTENTION

}  // namespace moe
