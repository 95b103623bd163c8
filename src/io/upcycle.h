// Owns upcycling (DESIGN §6 upcycle.*): a dense HF Llama/Mistral/Qwen3 dir → a Mixtral/Qwen3-MoE model whose experts copy the dense MLP.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "io/hf_model.h"
#include "model/param_table.h"

namespace moe {

// An upcycled model held in memory: the MoE config and every tensor of build_param_table(model) (fp32).
struct UpcycledModel {
  ModelConfig model;
  std::vector<float> params;  // [build_param_table(model).total_numel()], in that table's layout
};

// The MoE ModelConfig that upcycling `u.from` gives (reads only u.from/config.json; cheap).
//   model_type llama | mistral → arch mixtral;  qwen3 → arch qwen3_moe (q_norm/k_norm kept).
//   Anything else, attention_bias / mlp_bias true, hidden_act other than silu, scaled RoPE (rope_scaling or
//   rope_parameters.rope_type other than "default"), sliding-window attention → BadInput (exit 2).
//   num_experts = u.num_experts, top_k = u.top_k, expert width = dense intermediate_size (Mixtral:
//   intermediate_size; Qwen3-MoE: moe_intermediate_size = intermediate_size = dense width, mlp_only_layers []
//   and decoder_sparse_step 1 so every layer is MoE), norm_topk_prob true (top-k weights renormalised),
//   num_layers = dense layers + dus_source_layers(...) extras, init_std = `init_std`.
ModelConfig upcycled_config(const UpcycleConfig& u, double init_std);

// Depth up-scaling (DUS) rule: for a dense model of L layers and depth_pct p ∈ [0, 100], D = floor(p/100·L + 0.5)
// layers are duplicated (round half up; 0 → none). Placement follows Surogate's upcycle_moe.py: the copies are
// spread evenly over depth, source layers floor((i + 1)·L / (D + 1)) for i = 0..D−1 (distinct, since D ≤ L), and
// each copy sits directly after its source (in place), so the layer count grows to L + D (p = 100 doubles it:
// every layer is followed by its copy). Returns, for each of the L + D new layers, the dense layer it copies.
// The duplicated layers are exact copies of their source; the model's logits then differ from the dense model's.
std::vector<int> dus_source_layers(int dense_layers, double depth_pct);

// Fills every entry of `table` (any ExpertRange / padding: a rank's local table works, padding is left as is)
// in params [table.total_numel()] from the dense model at u.from. `m` must be upcycled_config(u, ·).
// For new layer l copying dense layer s = dus_source_layers(...)[l]:
//   attention, q_norm/k_norm, both layer norms ← dense layer s; embed_tokens, model.norm, lm_head ← dense
//   (lm_head absent when tie_word_embeddings);
//   expert e of layer l: w1/gate_proj ← mlp.gate_proj, w3/up_proj ← mlp.up_proj, w2/down_proj ← mlp.down_proj
//   of dense layer s, plus, when u.noise > 0, additive noise  u.noise · std(W) · N(0, 1)  per element (std(W) =
//   population std of the dense tensor W);
//   router (block_sparse_moe.gate / mlp.gate) ~ N(0, m.init_std).
// Randomness: Philox(seed, RngPurpose::Upcycle), stream = FNV-1a hash of the target tensor's HF name, element
// index = flat index; noise uses sub-stream 0, the router sub-stream 1. Every rank draws identical values.
// With noise 0 and depth_pct 0 the MoE computes the dense model exactly (in math): all experts are equal and
// the renormalised top-k weights sum to 1.
// (UpcycleReader over every unit.)
void upcycle_weights(const UpcycleConfig& u, uint64_t seed, const ModelConfig& m, const ParamTable& table,
                     float* params);

// upcycle_weights staged one table unit at a time (start-up memory: one unit buffer plus one dense tensor).
// The constructor opens u.from once and runs every shape, dtype and missing-tensor check, with upcycle_weights's
// messages; read_unit fills the entries of table.units()[unit] in dst [that unit's size()] (table layout
// relative to the unit's begin, padding left as is), converting each dense source it needs (a dense tensor
// copied into several units is converted once per unit; its noise scale is the same each time). A dense
// tensor holding a non-finite value → BadInput naming it. `table` must stay alive while this lives.
class UpcycleReader {
 public:
  UpcycleReader(const UpcycleConfig& u, uint64_t seed, const ModelConfig& m, const ParamTable& table);
  void read_unit(int unit, float* dst) const;

 private:
  struct Source {
    std::string name;                       // dense tensor
    bool noisy = false;                     // expert copies with u.noise > 0
    std::vector<const ParamInfo*> targets;  // table entries it fills, in name order
  };
  const ParamTable& table_;
  double noise_ = 0, init_std_ = 0;
  uint64_t seed_ = 0;
  WeightSource dense_;
  std::vector<Source> sources_;             // by dense name
  std::vector<const ParamInfo*> routers_;   // fresh routers
};

// upcycled_config + upcycle_weights into the full logical table (build_param_table(model)).
UpcycledModel upcycle_dense(const UpcycleConfig& u, uint64_t seed, double init_std);

}  // namespace moe
