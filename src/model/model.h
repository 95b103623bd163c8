// Owns the decoder (Mixtral / Qwen3-MoE): forward and backward of one micro-batch over flat parameter buffers [C4.layer].
#pragma once
#include <memory>
#include <vector>

#include "config/config.h"
#include "core/arena.h"
#include "model/param_access.h"
#include "model/param_table.h"
#include "moe/moe_layer.h"

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

template <typename T>
class Model {
 public:
  // Plans every activation buffer for micro-batches of B sequences of L tokens (allocated here, once).
  // shard: the experts this rank holds and its EP group (default: all experts, one process).
  // dense_pad / expert_pad: segment padding of the parameter table (ZeRO shard groups).
  Model(const ModelConfig& m, const MoeConfig& moe, i64 B, i64 L, AllocPolicy policy = AllocPolicy::Allocate,
        const ExpertShardSpec& shard = {}, i64 dense_pad = 1, i64 expert_pad = 1);
  ~Model();

  const ParamTable& table() const { return table_; }
  const ModelConfig& config() const { return m_; }
  int num_moe_layers() const { return int(moe_layers_.size()); }
  i64 activation_bytes() const { return arena_.bytes(); }

  // inputs/targets [B·L]. bias: per MoE layer [E] selection bias (may be empty).
  MicroStats forward(ParamAccess<T>& access, const int32_t* inputs, const int32_t* targets,
                     const std::vector<std::vector<float>>& bias, const RngCtx& rng, Mode mode);
  // Accumulates into the unit gradients the gradient of the objective terms of this micro-batch (after forward).
  void backward(ParamAccess<T>& access, const int32_t* inputs, const int32_t* targets, const LossScales& sc,
                AuxForm form, const GlobalRouting* global);

  // Flat-buffer conveniences: params/grads [table.total_numel()].
  MicroStats forward(const T* params, const int32_t* inputs, const int32_t* targets,
                     const std::vector<std::vector<float>>& bias, const RngCtx& rng, Mode mode) {
    FlatParamAccess<T> a(table_, params, nullptr);
    return forward(a, inputs, targets, bias, rng, mode);
  }
  void backward(const T* params, T* grads, const int32_t* inputs, const int32_t* targets, const LossScales& sc,
                AuxForm form, const GlobalRouting* global) {
    FlatParamAccess<T> a(table_, params, grads);
    backward(a, inputs, targets, sc, form, global);
  }

  const T* logits() const { return logits_; }  // [B·L, V] after forward (before backward overwrites it)
  i64 tokens() const { return B_ * L_; }

 private:
  struct Impl;
  ModelConfig m_;
  MoeConfig moe_;
  i64 B_, L_;
  ParamTable table_;
  Arena arena_;
  std::vector<std::unique_ptr<MoeLayer<T>>> moe_layers_;  // one per MoE layer
  std::unique_ptr<Impl> impl_;
  T* logits_ = nullptr;
  MicroStats last_;
};

}  // namespace moe
