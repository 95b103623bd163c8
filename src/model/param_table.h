// Owns the one parameter table (name = HF name, shape, offset, dtype, storage kind, trainable) that drives
// allocation, init, optimizer and I/O.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "core/dims.h"
#include "core/tensor.h"

namespace moe {

struct LoraSpec;  // peft/lora.h

// How an entry's elements are stored. Dense: numel elements of `dtype`, row-major. Nf4Blocks (reserved for
// QLoRA bases: 4-bit codes + per-block absmax) is refused until a storage for it exists.
enum class StorageKind : uint8_t { Dense, Nf4Blocks };

struct ParamInfo {
  std::string name;          // exact HF safetensors name, e.g. model.layers.0.block_sparse_moe.experts.3.w1.weight
  std::vector<i64> shape;    // [out, in] for linear weights (PyTorch nn.Linear), [n] for norms
  i64 offset = 0;            // element offset in the flat fp32 parameter buffer
  i64 numel = 0;
  bool decay = false;        // AdamW weight decay: tensors with >= 2 dims [C5.adamw]
  bool is_norm = false;      // initialised to ones
  int unit = 0;              // sharding unit (0 embed, 1 + l layer l, L + 1 final norm/lm_head)
  bool expert = false;       // expert tensor (reduced over the expert-data-parallel group)
  DType dtype = DType::F32;  // storage dtype of the master copy (fp32 today)
  StorageKind kind = StorageKind::Dense;
  i64 byte_offset = 0;       // offset · element size: where the entry starts in its storage, in bytes
  // Trainable entries get gradients and AdamW moments; frozen ones (LoRA/QLoRA bases) are only read: no
  // gradient buffer, no moments, never reduced or updated (still gathered under ZeRO-3).
  bool trainable = true;
};

// A unit is gathered/released as one piece under ZeRO-3: [dense segment | expert segment], each padded with
// zeros to a multiple of its replication group size so it splits evenly into shards.
struct ParamUnit {
  i64 begin = 0;       // first element
  i64 expert_begin = 0;  // end of the dense segment (incl. padding) = start of the expert segment
  i64 end = 0;         // one past the expert segment (incl. padding)
  i64 size() const { return end - begin; }
};

class ParamTable {
 public:
  // Units are opened in order; tensors go to the open unit's dense or expert segment (dense first).
  void begin_unit();
  void add(const std::string& name, std::vector<i64> shape, bool is_norm = false, bool expert = false);
  // Pads the open segment with zeros to a multiple of `multiple` elements.
  void pad_to(i64 multiple);
  void mark_expert_begin();
  void end_unit();
  // Freezes (false) or unfreezes an entry. Call before a ParamState is built on the table: the state sizes
  // gradients and moments from the flags it finds then. MT_CHECK when the name is absent.
  void set_trainable(const std::string& name, bool trainable);
  // Declares an entry's storage (dtype, kind); byte_offset follows. ParamState accepts dense fp32 only today
  // (Nf4Blocks and other dtypes are refused there). MT_CHECK when the name is absent.
  void set_storage(const std::string& name, DType dtype, StorageKind kind);
  // Elements of trainable entries (no padding).
  i64 trainable_numel() const;
  const ParamInfo& at(const std::string& name) const;   // MT_CHECK when absent
  const ParamInfo* find(const std::string& name) const;  // nullptr when absent
  const std::vector<ParamInfo>& entries() const { return entries_; }
  i64 total_numel() const { return total_; }         // incl. padding
  i64 tensor_numel() const;                          // Σ tensor sizes (no padding)
  const std::vector<ParamUnit>& units() const { return units_; }

 private:
  std::vector<ParamInfo> entries_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<ParamUnit> units_;
  i64 total_ = 0;
  bool in_expert_ = false;
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

// The table of one rank, unit by unit: embed | layer 0 .. L−1 | final norm + lm_head. A layer's dense
// segment holds norms, attention, router (or dense MLP); its expert segment the experts of `experts` in the
// order [w1_e0, w3_e0, w1_e1, w3_e1, …, w2_e0, w2_e1, …]: gate and up of expert e form one [2I, H] block
// ([w1; w3], one GEMM), the local experts' [w1; w3] blocks follow each other with stride 2·I·H (one grouped
// GEMM), then the w2 blocks with stride H·I. Names (HF) and checkpoint/HDF5 layouts are per tensor and do not
// depend on this order.
// Segments are padded to multiples of dense_pad / expert_pad (the sizes of the groups that shard them).
// The defaults give the full logical model (what checkpoints and HF files hold), unpadded.
ParamTable build_param_table(const ModelConfig& m, ExpertRange experts = {}, i64 dense_pad = 1, i64 expert_pad = 1);

// A LoRA/QLoRA run's state table (lora.active(); otherwise the table above): the same units without the base
// linears (q/k/v/o, every expert's w1/w3/w2, dense-MLP layers), plus the adapters of peft/lora.h, trainable:
// attention adapters after the layer's attention weights, expert adapters per local expert in the expert segment
// ([gate_up A, B][down A, B] per expert). Embeddings, norms and lm_head are frozen; the router is frozen unless
// lora.train_router.
ParamTable build_param_table(const ModelConfig& m, const LoraSpec& lora, ExpertRange experts = {}, i64 dense_pad = 1,
                             i64 expert_pad = 1);
// The base linears a LoRA/QLoRA run keeps frozen, per unit in the full table's order (units 0 and L+1 empty),
// unpadded: what BaseWeights stores and ParamAccess::base() hands the model.
ParamTable build_base_table(const ModelConfig& m, ExpertRange experts = {});

}  // namespace moe
