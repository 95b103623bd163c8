// Owns the one parameter table (name = HF name, shape, offset, decay) that drives allocation, init, optimizer and I/O.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

struct ParamInfo {
  std::string name;          // exact HF safetensors name, e.g. model.layers.0.block_sparse_moe.experts.3.w1.weight
  std::vector<i64> shape;    // [out, in] for linear weights (PyTorch nn.Linear), [n] for norms
  i64 offset = 0;            // element offset in the flat fp32 parameter buffer
  i64 numel = 0;
  bool decay = false;        // AdamW weight decay: tensors with >= 2 dims [C5.adamw]
  bool is_norm = false;      // initialised to ones
};

class ParamTable {
 public:
  void add(const std::string& name, std::vector<i64> shape, bool is_norm = false);
  const ParamInfo& at(const std::string& name) const;   // MT_CHECK when absent
  const ParamInfo* find(const std::string& name) const;  // nullptr when absent
  const std::vector<ParamInfo>& entries() const { return entries_; }
  i64 total_numel() const { return total_; }
  // Entries are laid out as [dense segment | expert segment]: gradients of the first are reduced over all
  // ranks, of the second over the expert-data-parallel group.
  i64 dense_numel() const { return dense_; }
  void mark_dense_end() { dense_ = total_; }

 private:
  std::vector<ParamInfo> entries_;
  std::unordered_map<std::string, size_t> index_;
  i64 total_ = 0;
  i64 dense_ = 0;
};

// Which experts this rank stores: [first, first + count). count < 0 = all (no expert parallelism).
struct ExpertRange {
  int first = 0;
  int count = -1;
};

// HF names of one layer's tensors, per architecture. [C4.layer]
struct LayerNames {
  std::string input_norm, post_norm, q, k, v, o, q_norm, k_norm;
  std::string router;                    // MoE layers
  std::vector<std::string> w1, w3, w2;   // per expert: gate (SiLU), up, down
  std::string dense_gate, dense_up, dense_down;  // Qwen3 dense-MLP layers
};
LayerNames layer_names(const ModelConfig& m, int layer);

// The table of one rank: every dense tensor (embed, per-layer attention/norms/routers/dense MLPs, final norm,
// lm_head, in model order), then the experts of `experts` (layer-major, expert, w1/w2/w3).
// The default range gives the full logical model (what checkpoints and HF files hold).
ParamTable build_param_table(const ModelConfig& m, ExpertRange experts = {});

}  // namespace moe
