// Owns the CUDA causal (sliding-window) GQA attention, forward (out + lse) and backward (dq, dk, dv), flash-style
// (twin: kernels/ref/attention_ref.cpp; mask and score arithmetic: kernels/math/attention.h). Simple tiled kernels on
// CUDA cores with fp32 accumulation; every output element is summed by one lane in a fixed order (no atomics), so
// two runs give the same bits.
#include <cmath>

#include "kernels/cuda/dense_common.cuh"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/math/attention.h"

namespace moe {

using namespace cuda_detail;

namespace {

constexpr int kWarps = 8;                    // query rows (forward, dq) or key rows (dk/dv) per block, one per warp
constexpr int kTile = 32;                    // keys (forward, dq) or queries (dk/dv) per shared-memory tile = lanes
constexpr int kDpl = int(kAttnMaxD) / 32;    // head-dim elements per lane: d = lane + 32·t, t < kDpl
constexpr unsigned kFull = 0xffffffffu;

// dst[jj·Dp + d] = row (j0 + jj) of base (rows `stride` apart), as float; rows ≥ jend are 0. Whole block.
template <typename T>
__device__ void load_tile(float* dst, int Dp, const T* base, i64 stride, int j0, int jend, int D) {
  for (int e = threadIdx.x; e < kTile * D; e += blockDim.x) {
    const int jj = e / D, d = e - jj * D, j = j0 + jj;
    dst[jj * Dp + d] = j < jend ? ld(base + i64(j) * stride + d) : 0.f;
  }
}

// Σ_d a[d]·b[d] in order (fp32).
__device__ __forceinline__ float dot_d(const float* a, const float* b, int D) {
  float s = 0.f;
  for (int d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

// Forward. Grid (⌈L/kWarps⌉, B·NH); warp w of block x owns query row i = x·kWarps + w of head h in batch b.
// Shared: K tile, V tile [kTile][D+1] (padded: lanes read different rows conflict-free), q rows [kWarps][D].
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    attn_fwd_kernel(T* out, float* lse, const T* q, const T* k, const T* v, int L, int NH, int NKV, int D, int window,
                    float scale) {
  extern __shared__ float sm[];
  const int Dp = D + 1;
  float* Ks = sm;
  float* Vs = Ks + kTile * Dp;
  float* Qs = Vs + kTile * Dp;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = blockIdx.y / NH, h = blockIdx.y % NH, kvh = h / (NH / NKV);
  const int r0 = blockIdx.x * kWarps, r1 = min(L, r0 + kWarps);
  const int i = r0 + warp;
  const bool active = i < L;  // uniform over the warp
  const i64 qs = i64(NH) * D, ks = i64(NKV) * D;
  float* qw = Qs + warp * D;
  if (active)
    for (int d = lane; d < D; d += 32) qw[d] = ld(q + (i64(b) * L + i) * qs + i64(h) * D + d);
  const T* kb = k + i64(b) * L * ks + i64(kvh) * D;
  const T* vb = v + i64(b) * L * ks + i64(kvh) * D;
  const int c0 = int(math::attn_first_key(r0, window));  // keys [c0, r1) reach this block's rows
  const int lo = active ? int(math::attn_first_key(i, window)) : 0;

  // Pass 1: the row's log-sum-exp (lane statistics over keys j ≡ lane mod 32, then a butterfly merge).
  float m = -INFINITY, l = 0.f;
  for (int t0 = c0; t0 < r1; t0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and qw written)
    load_tile(Ks, Dp, kb, ks, t0, r1, D);
    __syncthreads();
    const int j = t0 + lane;
    if (active && j >= lo && j <= i) math::attn_online_add(m, l, dot_d(qw, Ks + lane * Dp, D) * scale);
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(kFull, m, off), l2 = __shfl_xor_sync(kFull, l, off);
    math::attn_online_merge(m, l, m2, l2);
  }
  const float lse_i = math::attn_lse(m, l);
  if (active && lane == 0) lse[(i64(b) * NH + h) * L + i] = lse_i;

  // Pass 2: out_i = Σ_j T(exp(s_ij − lse_i)) · v_j, lane owning d = lane + 32t.
  float o[kDpl];
#pragma unroll
  for (int t = 0; t < kDpl; ++t) o[t] = 0.f;
  for (int t0 = c0; t0 < r1; t0 += kTile) {
    __syncthreads();
    load_tile(Ks, Dp, kb, ks, t0, r1, D);
    load_tile(Vs, Dp, vb, ks, t0, r1, D);
    __syncthreads();
    if (active) {
      const int j = t0 + lane;
      float p = 0.f;
      if (j >= lo && j <= i) p = float(T(expf(dot_d(qw, Ks + lane * Dp, D) * scale - lse_i)));  // P rounded to T
      const int ja = max(0, lo - t0), jb = min(kTile, i + 1 - t0);  // the tile's visible keys
      for (int jj = ja; jj < jb; ++jj) {
        const float pj = __shfl_sync(kFull, p, jj);
#pragma unroll
        for (int t = 0; t < kDpl; ++t) {
          const int d = lane + 32 * t;
          if (d < D) o[t] += pj * Vs[jj * Dp + d];
        }
      }
    }
  }
  if (active) {
    T* orow = out + (i64(b) * L + i) * qs + i64(h) * D;
#pragma unroll
    for (int t = 0; t < kDpl; ++t) {
      const int d = lane + 32 * t;
      if (d < D) orow[d] = T(o[t]);
    }
  }
}

// D_i = Σ_d dout_id · out_id per (b, h, i), one warp per row g = (b·NH + h)·L + i.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    attn_delta_kernel(float* Dd, const T* dout, const T* out, int L, int NH, int D, i64 rows) {
  const i64 g = i64(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (g >= rows) return;  // uniform over the warp
  const i64 i = g % L, bh = g / L, b = bh / NH, h = bh % NH;
  const i64 off = (b * L + i) * i64(NH) * D + h * D;
  float s = 0.f;
  for (int d = lane; d < D; d += 32) s += ld(dout + off + d) * ld(out + off + d);
  s = warp_sum(s);
  if (lane == 0) Dd[g] = s;
}

// dq. Grid (⌈L/kWarps⌉, B·NH); warp per query row, keys tiled as in the forward.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    attn_dq_kernel(T* dq, const T* dout, const float* lse, const float* Dd, const T* q, const T* k, const T* v, int L,
                   int NH, int NKV, int D, int window, float scale) {
  extern __shared__ float sm[];
  const int Dp = D + 1;
  float* Ks = sm;
  float* Vs = Ks + kTile * Dp;
  float* Qs = Vs + kTile * Dp;
  float* dOs = Qs + kWarps * D;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = blockIdx.y / NH, h = blockIdx.y % NH, kvh = h / (NH / NKV);
  const int r0 = blockIdx.x * kWarps, r1 = min(L, r0 + kWarps);
  const int i = r0 + warp;
  const bool active = i < L;
  const i64 qs = i64(NH) * D, ks = i64(NKV) * D;
  float* qw = Qs + warp * D;
  float* dow = dOs + warp * D;
  float lse_i = 0.f, Di = 0.f;
  if (active) {
    const i64 off = (i64(b) * L + i) * qs + i64(h) * D;
    for (int d = lane; d < D; d += 32) qw[d] = ld(q + off + d), dow[d] = ld(dout + off + d);
    lse_i = lse[(i64(b) * NH + h) * L + i];
    Di = Dd[(i64(b) * NH + h) * L + i];
  }
  const T* kb = k + i64(b) * L * ks + i64(kvh) * D;
  const T* vb = v + i64(b) * L * ks + i64(kvh) * D;
  const int c0 = int(math::attn_first_key(r0, window));
  const int lo = active ? int(math::attn_first_key(i, window)) : 0;
  float acc[kDpl];
#pragma unroll
  for (int t = 0; t < kDpl; ++t) acc[t] = 0.f;
  for (int t0 = c0; t0 < r1; t0 += kTile) {
    __syncthreads();
    load_tile(Ks, Dp, kb, ks, t0, r1, D);
    load_tile(Vs, Dp, vb, ks, t0, r1, D);
    __syncthreads();
    if (active) {
      const int j = t0 + lane;
      float ds = 0.f;
      if (j >= lo && j <= i) {
        const float p = expf(dot_d(qw, Ks + lane * Dp, D) * scale - lse_i);
        ds = math::attn_dscore(p, dot_d(dow, Vs + lane * Dp, D), Di, scale);
      }
      const int ja = max(0, lo - t0), jb = min(kTile, i + 1 - t0);
      for (int jj = ja; jj < jb; ++jj) {
        const float dsj = __shfl_sync(kFull, ds, jj);
#pragma unroll
        for (int t = 0; t < kDpl; ++t) {
          const int d = lane + 32 * t;
          if (d < D) acc[t] += dsj * Ks[jj * Dp + d];
        }
      }
    }
  }
  if (active) {
    T* row = dq + (i64(b) * L + i) * qs + i64(h) * D;
#pragma unroll
    for (int t = 0; t < kDpl; ++t) {
      const int d = lane + 32 * t;
      if (d < D) row[d] = T(acc[t]);
    }
  }
}

// dk, dv. Grid (⌈L/kWarps⌉, B·NKV); warp per key row j of kv head kvh; loops over the query heads of the group, then
// over tiles of the queries that see the block's keys ([k0, query_end(k1 − 1))). Shared: q and dout tiles
// [kTile][D+1], the warps' k and v rows [kWarps][D], the tile's lse and D_i.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    attn_dkdv_kernel(T* dk, T* dv, const T* dout, const float* lse, const float* Dd, const T* q, const T* k,
                     const T* v, int L, int NH, int NKV, int D, int window, float scale) {
  extern __shared__ float sm[];
  const int Dp = D + 1;
  float* Qs = sm;
  float* dOs = Qs + kTile * Dp;
  float* Kw = dOs + kTile * Dp;
  float* Vw = Kw + kWarps * D;
  float* lse_s = Vw + kWarps * D;
  float* D_s = lse_s + kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = blockIdx.y / NKV, kvh = blockIdx.y % NKV, rep = NH / NKV;
  const int k0 = blockIdx.x * kWarps, k1 = min(L, k0 + kWarps);
  const int j = k0 + warp;
  const bool active = j < L;
  const i64 qs = i64(NH) * D, ks = i64(NKV) * D;
  float* kw = Kw + warp * D;
  float* vw = Vw + warp * D;
  if (active) {
    const i64 off = (i64(b) * L + j) * ks + i64(kvh) * D;
    for (int d = lane; d < D; d += 32) kw[d] = ld(k + off + d), vw[d] = ld(v + off + d);
  }
  const int qend_blk = int(math::attn_query_end(k1 - 1, L, window));
  const int qend = active ? int(math::attn_query_end(j, L, window)) : 0;  // queries [j, qend) see key j
  float ak[kDpl], av[kDpl];
#pragma unroll
  for (int t = 0; t < kDpl; ++t) ak[t] = 0.f, av[t] = 0.f;
  for (int h = kvh * rep; h < (kvh + 1) * rep; ++h) {
    const T* qb = q + i64(b) * L * qs + i64(h) * D;
    const T* ob = dout + i64(b) * L * qs + i64(h) * D;
    const float* lrow = lse + (i64(b) * NH + h) * L;
    const float* drow = Dd + (i64(b) * NH + h) * L;
    for (int t0 = k0; t0 < qend_blk; t0 += kTile) {
      __syncthreads();  // the previous tile is consumed (and kw/vw written)
      load_tile(Qs, Dp, qb, qs, t0, qend_blk, D);
      load_tile(dOs, Dp, ob, qs, t0, qend_blk, D);
      if (threadIdx.x < kTile) {
        const int iq = t0 + threadIdx.x;
        lse_s[threadIdx.x] = iq < L ? lrow[iq] : 0.f;
        D_s[threadIdx.x] = iq < L ? drow[iq] : 0.f;
      }
      __syncthreads();
      if (active) {
        const int iq = t0 + lane;
        float p = 0.f, ds = 0.f;
        if (iq >= j && iq < qend) {  // query iq sees key j
          p = expf(dot_d(Qs + lane * Dp, kw, D) * scale - lse_s[lane]);
          ds = math::attn_dscore(p, dot_d(dOs + lane * Dp, vw, D), D_s[lane], scale);
        }
        const int ua = max(0, j - t0), ub = min(kTile, qend - t0);
        for (int u = ua; u < ub; ++u) {
          const float pu = __shfl_sync(kFull, p, u), dsu = __shfl_sync(kFull, ds, u);
#pragma unroll
          for (int t = 0; t < kDpl; ++t) {
            const int d = lane + 32 * t;
            if (d < D) {
              av[t] += pu * dOs[u * Dp + d];
              ak[t] += dsu * Qs[u * Dp + d];
            }
          }
        }
      }
    }
  }
  if (active) {
    const i64 off = (i64(b) * L + j) * ks + i64(kvh) * D;
#pragma unroll
    for (int t = 0; t < kDpl; ++t) {
      const int d = lane + 32 * t;
      if (d < D) dk[off + d] = T(ak[t]), dv[off + d] = T(av[t]);
    }
  }
}

// Dynamic shared memory above the 48 KiB default needs the kernel's opt-in.
template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > (size_t(48) << 10))
    MT_CUDA(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(bytes)));
}

void check_dims(const char* what, i64 B, i64 L, i64 NH, i64 NKV, i64 D) {
  MT_CHECK(NKV > 0 && NH % NKV == 0, what, ": NH ", NH, " is not a multiple of NKV ", NKV);
  MT_CHECK(D > 0 && D <= kAttnMaxD, what, ": head_dim ", D, " outside 1..", kAttnMaxD);
  MT_CHECK(L < (i64(1) << 30) && B * NH < 65536, what, ": B ", B, " L ", L, " NH ", NH, " beyond the launch grid");
}

float attn_scale(i64 D) { return float(1.0 / std::sqrt(double(D))); }  // the CPU's C(1 / √D)

}  // namespace

i64 attention_cuda_workspace_bytes(i64 B, i64 L, i64 NH) { return B * NH * L * i64(sizeof(float)); }

template <typename T>
void attention_forward_cuda(T* out, float* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV,
                            i64 D, i64 window, cudaStream_t s) {
  if (B == 0 || L == 0 || NH == 0) return;
  check_dims("attention_forward_cuda", B, L, NH, NKV, D);
  const size_t smem = sizeof(float) * size_t(2 * kTile * (D + 1) + kWarps * D);
  allow_smem(attn_fwd_kernel<T>, smem);
  const dim3 grid(unsigned((L + kWarps - 1) / kWarps), unsigned(B * NH));
  attn_fwd_kernel<T><<<grid, kWarps * 32, smem, s>>>(out, lse, q, k, v, int(L), int(NH), int(NKV), int(D),
                                                     int(window > L ? L : window), attn_scale(D));
  MT_CUDA_LAUNCH("attention_forward");
}

template <typename T>
void attention_backward_cuda(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q,
                             const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window, void* ws,
                             cudaStream_t s) {
  if (B == 0 || L == 0 || NH == 0) return;
  check_dims("attention_backward_cuda", B, L, NH, NKV, D);
  MT_CHECK(ws, "attention_backward_cuda: no workspace (attention_cuda_workspace_bytes)");
  float* Dd = static_cast<float*>(ws);
  const int w = int(window > L ? L : window);  // a window ≥ L masks nothing beyond causality
  const i64 rows = B * NH * L;
  attn_delta_kernel<T><<<unsigned((rows + kWarps - 1) / kWarps), kWarps * 32, 0, s>>>(Dd, dout, out, int(L), int(NH),
                                                                                     int(D), rows);
  MT_CUDA_LAUNCH("attention_backward_delta");
  const size_t smem_dq = sizeof(float) * size_t(2 * kTile * (D + 1) + 2 * kWarps * D);
  allow_smem(attn_dq_kernel<T>, smem_dq);
  const dim3 gq(unsigned((L + kWarps - 1) / kWarps), unsigned(B * NH));
  attn_dq_kernel<T><<<gq, kWarps * 32, smem_dq, s>>>(dq, dout, lse, Dd, q, k, v, int(L), int(NH), int(NKV), int(D), w,
                                                     attn_scale(D));
  MT_CUDA_LAUNCH("attention_backward_dq");
  const size_t smem_kv = sizeof(float) * size_t(2 * kTile * (D + 1) + 2 * kWarps * D + 2 * kTile);
  allow_smem(attn_dkdv_kernel<T>, smem_kv);
  const dim3 gk(unsigned((L + kWarps - 1) / kWarps), unsigned(B * NKV));
  attn_dkdv_kernel<T><<<gk, kWarps * 32, smem_kv, s>>>(dk, dv, dout, lse, Dd, q, k, v, int(L), int(NH), int(NKV),
                                                       int(D), w, attn_scale(D));
  MT_CUDA_LAUNCH("attention_backward_dkdv");
}

#define MT_ATTN_CUDA(T)                                                                                             \
  template void attention_forward_cuda<T>(T*, float*, const T*, const T*, const T*, i64, i64, i64, i64, i64, i64,  \
                                          cudaStream_t);                                                            \
  template void attention_backward_cuda<T>(T*, T*, T*, const T*, const T*, const float*, const T*, const T*,      \
                                           const T*, i64, i64, i64, i64, i64, i64, void*, cudaStream_t);
MT_ATTN_CUDA(float)
MT_ATTN_CUDA(bf16)
#undef MT_ATTN_CUDA

}  // namespace moe
