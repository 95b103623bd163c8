// Owns the raw-pointer launchers of the dense CUDA kernels (kernels/cuda/*.cu): outputs, inputs, dims, stream last;
// each mirrors its CPU twin in kernels/ref/ and shares its arithmetic through kernels/math/. No launcher allocates,
// synchronizes or copies to the host; every one returns at once for an empty problem. T = float or bf16 (explicit
// instantiations in the .cu files); statistics, norm gains and weight gradients are float (acc_t<T>).
#pragma once
#include <cstdint>

#include "core/bf16.h"
#include "core/dims.h"
#include "core/op_enums.h"
#include "kernels/math/rmsnorm.h"

typedef struct CUstream_st* cudaStream_t;

namespace moe {

// ---- RMSNorm [C4.rmsnorm] (twin: rmsnorm_ref) ----
// y[N,C], rstd[N] from x[N,C], w[C]; one block per row, sum of squares in double (thread-strided partials, fixed tree).
template <typename T>
void rmsnorm_forward_cuda(T* y, float* rstd, const T* x, const float* w, i64 N, i64 C, double eps, cudaStream_t s);
// dx[N,C] overwritten; dw[C] += Σ_rows dy·x·rstd: one thread per column summing rows in row order in double (the CPU
// order: dw is bitwise the CPU's), no atomics.
// ws: rmsnorm_backward_cuda_workspace_bytes(N, C) bytes (per-chunk column sums of dw, math::kRmsDwRows rows each).
inline i64 rmsnorm_backward_cuda_workspace_bytes(i64 N, i64 C) { return 8 * math::rmsnorm_dw_chunks(N) * C; }
template <typename T>
void rmsnorm_backward_cuda(T* dx, float* dw, const T* dy, const T* x, const float* w, const float* rstd, i64 N, i64 C,
                           void* ws, cudaStream_t s);

// ---- RoPE [C4.attention] (twin: rope_ref) ----
// (The cos/sin table [L, D/2] is built once on the host by rope_table_ref and copied: cuda_dense.cpp.)
// x [B·L, NHx·D] rotated in place (position = row % L).
template <typename T>
void rope_apply_cuda(T* x, const float* cos_t, const float* sin_t, i64 B, i64 L, i64 NHx, i64 D, RopeDirection dir,
                     cudaStream_t s);

// ---- SwiGLU [C4.expert] (twin: swiglu_ref) ----
template <typename T>
void swiglu_forward_cuda(T* h, const T* a, const T* b, i64 n, cudaStream_t s);
template <typename T>
void swiglu_backward_cuda(T* da, T* db, const T* dh, const T* a, const T* b, i64 n, cudaStream_t s);

// ---- Cross-entropy [C4.objective] (twin: cross_entropy_ref) ----
// The forward's blocks and partial sums: min(N, kCeMaxBlocks), so its scratch has a fixed size (planned once, not in
// the step loop).
constexpr i64 kCeMaxBlocks = 1024;
inline i64 cross_entropy_blocks(i64 N) { return N < kCeMaxBlocks ? N : kCeMaxBlocks; }
// partial[g], g < G = cross_entropy_blocks(N) (double): Σ of the row losses of rows n ≡ g (mod G) in increasing n, a
// row loss being logsumexp(logits row) − logit of the target; kIgnoreTarget rows add nothing, a target outside [0, V)
// adds NaN (so the loss guard stops the run instead of reading out of bounds). Block g takes those rows in turn.
template <typename T>
void cross_entropy_partials_cuda(double* partial, const T* logits, const int32_t* targets, i64 N, i64 V,
                                 cudaStream_t s);
// total[0] = Σ_n rows[n] in double: one block, thread-strided partials and a fixed tree (the same bits every run).
void sum_doubles_cuda(double* total, const double* rows, i64 N, cudaStream_t s);
// In place: logits [N,V] → scale · (softmax − onehot(target)), each rounded to T once; ignored rows 0.
template <typename T>
void cross_entropy_backward_inplace_cuda(T* logits, const int32_t* targets, i64 N, i64 V, double scale,
                                         cudaStream_t s);

// ---- Embedding (twin: CpuDenseOps embedding_*) ----
// x[Tn,H] = W[ids[t], :].
template <typename T>
void embedding_forward_cuda(T* x, const T* W, const int32_t* ids, i64 Tn, i64 H, cudaStream_t s);
// dW[V,H] += dx rows in token order, rows with ids[t] == pad_id skipped (−1: none). One block per token; the block of
// the FIRST occurrence of an id adds every occurrence's row, in token order, to that dW row (the others return), so
// each dW element is summed in exactly the CPU's order by one thread: no atomics, no sort, no workspace. Cost
// O(Tn²) id comparisons (scans from shared memory), small next to the GEMMs for Tn up to ~10⁵.
template <typename T>
void embedding_backward_cuda(float* dW, const T* dx, const int32_t* ids, i64 Tn, i64 H, int32_t pad_id,
                             cudaStream_t s);

// ---- Elementwise ----
// y[n] = a[n] + b[n] in fp32, rounded once (y may alias a or b).
template <typename T>
void add_cuda(T* y, const T* a, const T* b, i64 n, cudaStream_t s);
// y[n] = s·x[n] in fp32 (math::scale_round), rounded once (y may alias x).
template <typename T>
void scale_cuda(T* y, const T* x, float s, i64 n, cudaStream_t st);
// y [N,C] = x ⊙ LoRA-dropout mask (backend/dense_ops.h LoraDropout; math::lora_dropout_factor), y may alias x;
// keys [N] device or null. (twin: CpuDenseOps::lora_dropout)
template <typename T>
void lora_dropout_cuda(T* y, const T* x, i64 N, i64 C, double p, uint64_t seed, uint32_t step, uint32_t stream,
                       const i64* keys, uint32_t tag, cudaStream_t st);

// ---- Attention [C4.attention, B6] (twin: attention_ref) ----
// Largest head_dim the attention kernels take (per-lane register accumulators of kAttnMaxD / 32 floats).
constexpr i64 kAttnMaxD = 256;
// Workspace bytes of attention_backward_cuda: D_i = Σ_d dout·out per (b, h, i), [B, NH, L] floats.
i64 attention_cuda_workspace_bytes(i64 B, i64 L, i64 NH);
// Causal (sliding-window when window > 0) GQA attention, scale 1/√D: out [B·L, NH·D], lse [B, NH, L] from q [B·L,NH·D],
// k/v [B·L, NKV·D]. One warp per query row: pass 1 the row's log-sum-exp (online max/sum per lane, merged in a fixed
// butterfly), pass 2 P = exp(s − lse) (rounded to T before P·V, as the CPU) times V accumulated in fp32 per lane.
template <typename T>
void attention_forward_cuda(T* out, float* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV,
                            i64 D, i64 window, cudaStream_t s);
// dq, dk, dv overwritten. P recomputed from lse; dS = P (dP − D_i)/√D. dq: one warp per query row looping over keys;
// dk/dv: one warp per key row looping over the query heads of its kv head and the queries that see it. No atomics:
// every output element is summed by one lane in a fixed order. ws: attention_cuda_workspace_bytes(B, L, NH).
template <typename T>
void attention_backward_cuda(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q,
                             const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window, void* ws,
                             cudaStream_t s);

}  // namespace moe
