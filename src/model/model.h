// Owns the decoder (Mixtral / Qwen3-MoE): forward and backward of one micro-batch over flat parameter buffers [C4.layer].
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "config/config.h"
#include "core/arena.h"
#include "model/param_access.h"
#include "model/param_table.h"
#include "moe/moe_layer.h"
#include "peft/lora.h"

namespace moe {

// What one micro-batch's forward produced (losses unscaled, router statistics per MoE layer).
struct MicroStats {
  double ce_sum = 0;                  // Σ_t CE_t over the micro-batch
  i64 tokens = 0;                     // loss tokens T
  std::vector<RouterStats> router;    // [num MoE layers]
};

// Router counts summed over the global batch, for aux_loss_scope: global. [C4.aux]
struct GlobalRouting {
  std::vector<std::vector<double>> routed;  // [moe layer][E]
  double tokens = 0;                        // tokens in the global batch
};

// The per-micro-batch scales of the objective Σ_m [CE_sum_m/N + (aux_coef·aux_m + z_coef·z_m)/M]. [C4.objective]
struct LossScales {
  double ce = 0;   // 1 / N
  double aux = 0;  // aux_coef / M
  double z = 0;    // z_coef / M
};

// aux_m and z_m of a micro-batch from its statistics (global = null → micro scope). [C4.aux] [C4.zloss]
double aux_loss_value(const MicroStats& s, const ModelConfig& m, AuxForm form, const GlobalRouting* global);
double z_loss_value(const MicroStats& s);
// The same terms of MoE layer l alone (router health per layer): the layer form is one layer's (E/K)·Σ_e f_e·P_e;
// the hf form pooled over one layer is E·Σ_e (c_e/T)·(P_e/T); z is mean_t lse(logits_t)² of that layer.
double aux_loss_layer_value(const MicroStats& s, const ModelConfig& m, AuxForm form, const GlobalRouting* global,
                            size_t l);
double z_loss_layer_value(const MicroStats& s, size_t l);

// How a model is laid out beside its shapes: allocation, expert shard, parameter-table padding, recomputation.
struct ModelOptions {
  AllocPolicy policy = AllocPolicy::Allocate;
  ExpertShardSpec shard{};   // the experts this rank holds and its EP group (default: all experts, one process)
  i64 dense_pad = 1;         // segment padding of the parameter table (ZeRO shard groups)
  i64 expert_pad = 1;
  // What backward recomputes instead of keeping (train.recompute); gradients are bitwise those of None. [C6.recompute]
  //   None       every activation of every layer kept.
  //   Selective  per layer the residual-stream input x, the attention input norm(x) and the MLP/MoE input
  //              norm(h) (+ h, rstd) are kept; q/k/v, RoPE, attention output and lse, the MoE block (router,
  //              dispatch, experts, combine) and the dense MLP activations are recomputed in backward, in one
  //              set of buffers shared by all layers.
  //   Full       only each layer's input x is kept; backward reruns the whole layer forward first.
  Recompute recompute = Recompute::None;
  // LoRA/QLoRA (lora.active()): the table is build_param_table(m, lora, …) (adapters, no base linears), the base
  // linears come from ParamAccess::base() in build_base_table layout and get no gradient; attention and expert
  // adapters run split (x·Aᵀ then ·Bᵀ, ΔW never formed).
  LoraSpec lora{};
};

// The decoder over a backend: every op (GEMMs, norms, RoPE, attention, embedding, residual adds, copies) is a call
// of backend.dense; the MoE blocks are MoeLayer objects. T: storage type of weights copies and activations.
template <typename T>
class Model {
 public:
  using A = acc_t<T>;  // gradients, norm statistics and gains
  // Plans every activation buffer for micro-batches of B sequences of L tokens (allocated here, once).
  // The backend must outlive the model.
  Model(Backend<T>& backend, const ModelConfig& m, const MoeConfig& moe, i64 B, i64 L, const ModelOptions& opt = {});
  // The same on a CPU backend the model creates and owns (tests, plan-only sizing).
  Model(const ModelConfig& m, const MoeConfig& moe, i64 B, i64 L, const ModelOptions& opt = {});
  ~Model();

  const ParamTable& table() const { return table_; }
  // LoRA/QLoRA runs: the frozen base linears ParamAccess::base() hands out (empty table for full fine-tuning).
  const ParamTable& base_table() const { return base_table_; }
  const ModelConfig& config() const { return m_; }
  // Packed documents (data.reset_attention): doc_start [B·L] in the backend's memory, where each token's document
  // starts in its sequence; every later forward and backward restarts RoPE positions there and attends within the
  // document only (C5.packing). The caller refills it per micro-batch; null (default) = one document per sequence.
  void set_packed_documents(const int32_t* doc_start) { doc_start_ = doc_start; }
  int num_moe_layers() const { return num_moe_; }
  i64 activation_bytes() const { return arena_.bytes(); }
  Recompute recompute() const { return opt_.recompute; }

  // inputs/targets [B·L]. bias: per MoE layer [E] selection bias (may be empty).
  // The result lives in the model until the next forward (no allocation per step).
  const MicroStats& forward(ParamAccess<T>& access, const int32_t* inputs, const int32_t* targets,
                            const std::vector<std::vector<float>>& bias, const RngCtx& rng, Mode mode);
  // Accumulates into the unit gradients the gradient of the objective terms of this micro-batch (after forward).
  // With recompute, backward reruns parts of the last forward (same inputs, bias, RNG context and mode).
  void backward(ParamAccess<T>& access, const int32_t* inputs, const int32_t* targets, const LossScales& sc,
                AuxForm form, const GlobalRouting* global);

  // Flat-buffer conveniences: params/grads [table.total_numel()]; params_acc: the fp32 values (bf16 only; null
  // for float/double, where they are the params).
  const MicroStats& forward(const T* params, const int32_t* inputs, const int32_t* targets,
                            const std::vector<std::vector<float>>& bias, const RngCtx& rng, Mode mode,
                            const A* params_acc = nullptr) {
    FlatParamAccess<T> a(table_, params, nullptr, params_acc);
    return forward(a, inputs, targets, bias, rng, mode);
  }
  void backward(const T* params, A* grads, const int32_t* inputs, const int32_t* targets, const LossScales& sc,
                AuxForm form, const GlobalRouting* global, const A* params_acc = nullptr) {
    FlatParamAccess<T> a(table_, params, grads, params_acc);
    backward(a, inputs, targets, sc, form, global);
  }

  // Routing capture (the router-health churn probe): while dst is set, every forward copies each MoE layer's top-k
  // expert indices [B·L·top_k] to (*dst)[moe index] on the host (one copy per layer; sized here). Null stops it.
  void capture_topk(std::vector<std::vector<int>>* dst) {
    topk_capture_ = dst;
    if (dst) {
      dst->resize(size_t(num_moe_));
      for (auto& v : *dst) v.resize(size_t(B_ * L_ * m_.top_k));
    }
  }

  const T* logits() const { return logits_; }  // [B·L, V] after forward (before backward overwrites it); T (bf16: rounded)
  i64 tokens() const { return B_ * L_; }

 private:
  struct Impl;
  Model(std::unique_ptr<Backend<T>> owned, Backend<T>* backend, const ModelConfig& m, const MoeConfig& moe, i64 B,
        i64 L, const ModelOptions& opt);
  MoeLayer<T>& moe_layer(int moe_index) { return *moe_layers_[moe_layers_.size() == 1 ? 0 : moe_index]; }
  // P: the unit's T weights; PA: its acc_t<T> values (router weight and norm gains, DESIGN §8).
  // PB: the unit's base linears (ParamAccess::base under LoRA/QLoRA; = P for full fine-tuning).
  void layer_forward(const T* P, const A* PA, const T* PB, int l, Mode mode, MicroStats* st);
  void attention_core(const T* P, const A* PA, const T* PB, int l);
  void mlp_forward(const T* P, const A* PA, const T* PB, int l, T* out, Mode mode, MicroStats* st);
  void recompute_layer(const T* P, const A* PA, const T* PB, int l);
  // Attention adapter i (0 q, 1 k, 2 v, 3 o) of layer l; no-ops without one.
  void lora_forward(T* y, const T* x, const T* P, int l, int i, i64 in, i64 out);
  void lora_backward(T* dx, A* G, const T* dy, const T* x, const T* P, int l, int i, i64 in, i64 out);
  LoraDropout attention_dropout(int l, int i) const;

  std::unique_ptr<Backend<T>> owned_backend_;  // set by the CPU convenience constructor
  Backend<T>& be_;
  DenseOps<T>& ops_;
  ModelConfig m_;
  MoeConfig moe_;
  i64 B_, L_;
  ModelOptions opt_;
  ParamTable table_;
  ParamTable base_table_;  // LoRA/QLoRA: the base linears (see ModelOptions::lora)
  Buffer<std::byte> arena_block_;  // the arena's memory on a device backend (host: the arena owns it)
  Arena arena_;
  int num_moe_ = 0;
  // One per MoE layer; with recompute one layer object serves every MoE layer (its buffers are shared).
  std::vector<std::unique_ptr<MoeLayer<T>>> moe_layers_;
  std::vector<std::vector<int>>* topk_capture_ = nullptr;  // capture_topk
  std::unique_ptr<Impl> impl_;
  T* logits_ = nullptr;
  MicroStats last_;  // the last forward's result (router [num MoE layers] sized once)
  // What backward's recomputation needs of the last forward (recompute ≠ None).
  RngCtx rng_{};
  const int32_t* doc_start_ = nullptr;
  Mode mode_ = Mode::Train;
  std::vector<std::vector<float>> bias_;
};

}  // namespace moe
