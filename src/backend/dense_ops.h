// Owns the dense half of the backend op table: linear/GEMM, RMSNorm, RoPE, attention, SwiGLU, cross-entropy, embedding, elementwise.
#pragma once
#include <cstdint>

#include "core/bf16.h"
#include "core/dims.h"
#include "core/op_enums.h"

namespace moe {

// LoRA dropout (PEFT's lora_dropout on an adapter's input), regenerated wherever the rows are and never stored: row n
// has key keys[n] (expert rows: MoeOps::pair_keys, (stream << 32) | pair) or, with keys == null, (stream << 32) | n
// (token rows of a micro-batch, stream = rng_stream(layer, global micro-batch)). Element c of a C-wide row keeps
// its value · 1/(1−p) unless Philox(seed, LoraDropout).uniform(row·C + c, step, (key >> 32) ^ (tag + 1) << 27) < p
// (math::lora_dropout_factor); tag = the adapter's LoraProj index, so q/k/v of one input draw independently.
struct LoraDropout {
  double p = 0;
  uint64_t seed = 0;
  uint32_t step = 0;
  uint32_t stream = 0;
  const i64* keys = nullptr;  // [N] in the backend's memory, or null
  uint32_t tag = 0;
};

// Dense ops over storage type T (float, double, or bf16); A = acc_t<T> holds statistics, norm gains and weight
// gradients (fp32 for bf16). Every pointer lives in the backend's memory space; ops are ordered on the
// backend's stream (the CPU runs them in call order). Shapes use the letters of core/dims.h; all row-major.
// bf16 rounding points are the contract of docs/DESIGN.md "bf16": every T output is rounded to nearest-even
// once, from an fp32 value accumulated in fp32.
// Workspaces: ops never allocate. An op that needs scratch says how many bytes for given dims (a TE-style
// workspace query; 0 = pass null), the caller plans the largest once (its arena) and hands it to each call.
template <typename T>
class DenseOps {
 public:
  using A = acc_t<T>;
  virtual ~DenseOps() = default;

  // Scratch bytes of linear_forward / linear_backward for these dims (fp32 GEMM output of the bf16 path).
  virtual i64 linear_forward_workspace_bytes(i64 N, i64 in, i64 out) const = 0;
  virtual i64 linear_backward_workspace_bytes(i64 N, i64 in, i64 out) const = 0;
  // y[N,out] (+)= x[N,in] · W[out,in]ᵀ   (PyTorch nn.Linear layout)
  virtual void linear_forward(T* y, const T* x, const T* W, i64 N, i64 in, i64 out, Accumulate acc, void* ws) = 0;
  // dx[N,in] (+)= dy[N,out] · W (dx may be null); dW[out,in] += dy[N,out]ᵀ · x[N,in] in A. dW null: the weight is
  // frozen (a LoRA/QLoRA base linear) and the weight-gradient GEMM is skipped entirely (x is then not read); dx is
  // the same bits as with a dW.
  virtual void linear_backward(T* dx, A* dW, const T* dy, const T* x, const T* W, i64 N, i64 in, i64 out,
                               Accumulate dx_acc, void* ws) = 0;

  // y[N,C] = w[C] · x / sqrt(mean(x²) + eps); rstd[N] and the gain w in A (norm weights stay fp32). [C4.rmsnorm]
  virtual void rmsnorm_forward(T* y, A* rstd, const T* x, const A* w, i64 N, i64 C, double eps) = 0;
  // Scratch bytes of rmsnorm_backward for these dims (the per-chunk column sums of dw on a device; 0 on the CPU).
  virtual i64 rmsnorm_backward_workspace_bytes(i64 N, i64 C) const = 0;
  // dx[N,C] overwritten; dw[C] += Σ_rows dy · x̂ (row order: kernels/math/rmsnorm.h kRmsDwRows).
  virtual void rmsnorm_backward(T* dx, A* dw, const T* dy, const T* x, const A* w, const A* rstd, i64 N, i64 C,
                                void* ws) = 0;

  // cos/sin [L, D/2] in A (HF's fp32 rotary table); x [B·L, NHx·D] rotated in place. [C4.attention]
  // doc_start [B·L] (packed documents, data.reset_attention; null = one document per sequence): the position in its
  // sequence where each token's document starts; a token's rotary position is then i − doc_start (C5.packing).
  virtual void rope_table(A* cos_t, A* sin_t, i64 L, i64 D, double theta) = 0;
  virtual void rope_apply(T* x, const A* cos_t, const A* sin_t, i64 B, i64 L, i64 NHx, i64 D, RopeDirection dir,
                          const int32_t* doc_start) = 0;

  // Scratch bytes of attention_forward / attention_backward for these dims (one layer at a time).
  virtual i64 attention_workspace_bytes(i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window) const = 0;
  // Causal (optionally sliding-window) GQA attention, scale 1/√D. out [B·L, NH·D]; lse [B, NH, L] in A is all that
  // is saved besides out (flash-style: no [B, NH, L, L] probabilities are kept). q [B·L,NH·D], k/v [B·L,NKV·D].
  // doc_start [B·L] or null (as rope_apply): query i also sees no key before doc_start[i] (no attention across
  // packed documents).
  virtual void attention_forward(T* out, A* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV,
                                 i64 D, i64 window, const int32_t* doc_start, void* ws) = 0;
  // dq overwritten; dk, dv overwritten (summed over the query heads of a kv head). Recomputes probabilities
  // from q, k and lse.
  virtual void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const A* lse, const T* q,
                                  const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window,
                                  const int32_t* doc_start, void* ws) = 0;

  // h[n] = silu(a[n]) · b[n]; backward overwrites da, db. [C4.expert]
  virtual void swiglu_forward(T* h, const T* a, const T* b, i64 n) = 0;
  virtual void swiglu_backward(T* da, T* db, const T* dh, const T* a, const T* b, i64 n) = 0;

  // Σ_t CE_t over N rows of logits [N,V] (T, read in fp32 arithmetic or better) with targets [N].
  virtual double cross_entropy_forward(const T* logits, const int32_t* targets, i64 N, i64 V) = 0;
  // In place: logits [N,V] → dlogits = scale · (softmax(logits) − onehot), rounded to T.
  virtual void cross_entropy_backward_inplace(T* logits, const int32_t* targets, i64 N, i64 V, double scale) = 0;

  // x[T,H] = W[ids[t], :]; dW[V,H] += rows of dx in token order (rows of pad_id skipped; −1: none skipped).
  virtual void embedding_forward(T* x, const T* W, const int32_t* ids, i64 Tn, i64 H) = 0;
  virtual void embedding_backward(A* dW, const T* dx, const int32_t* ids, i64 Tn, i64 H, int32_t pad_id) = 0;

  // y[n] = a[n] + b[n] (residual); y may alias a or b.
  virtual void add(T* y, const T* a, const T* b, i64 n) = 0;
  // y[n] = s · x[n] with s taken as A (fp32 for bf16, rounded once from the double), the product in A rounded to T
  // once (math::scale_round); y may alias x. (The LoRA scaling alpha / r.)
  virtual void scale(T* y, const T* x, double s, i64 n) = 0;
  virtual void copy(T* dst, const T* src, i64 n) = 0;
  virtual void fill_zero(T* dst, i64 n) = 0;
  // y [N,C] = x ⊙ mask (LoraDropout above; the kept value scaled in A and rounded to T once); y may alias x. The same
  // d gives the same mask, so one op masks the adapter input in forward and its gradient in backward.
  virtual void lora_dropout(T* y, const T* x, i64 N, i64 C, const LoraDropout& d) = 0;
};

}  // namespace moe
