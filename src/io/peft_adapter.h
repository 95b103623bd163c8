// Owns PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors) in and out, both layouts
// (transformers-5 fused experts, transformers-4 per-expert Linears), and merging an adapter into full weights.
// Layout facts: docs/PEFT_LAYOUT.md; logical adapter tensors: ISSUE11 plan "Expert adapters".
#pragma once
#include <map>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/dims.h"
#include "model/param_table.h"
#include "peft/lora.h"  // LoraProj

namespace moe {

// Which PEFT/transformers generation a written adapter is for.
enum class PeftLayout {
  Fused,      // transformers ≥ 5 + PEFT ≥ 0.18: experts via target_parameters on mlp.experts.{gate_up,down}_proj
  PerExpert,  // transformers 4.x: one LoRA per expert nn.Linear (w1/w3/w2 or gate_proj/up_proj/down_proj)
};

// scaling = alpha / r (Off) or alpha / √r (On, PEFT's use_rslora).
enum class RsLora { Off, On };

// Whether the adapter carries the trained router of every MoE layer (PEFT modules_to_save) or leaves it as in the base.
enum class RouterSave { Frozen, Saved };

struct AdapterTensor {
  std::vector<i64> shape;
  std::vector<float> values;  // [numel] fp32, row-major
};

// The logical adapter tensors of one model (names of the ISSUE11 plan) and the adapter's hyper-parameters.
//   model.layers.L.self_attn.{q,k,v,o}_proj.lora_A.weight [r, in], ….lora_B.weight [out, r]
//   model.layers.L.<blk>.experts.E.gate_up_proj.lora_A.weight [r', H], ….lora_B.weight [n·I, r'] (n = targeted of
//     gate/up, rows gate first), model.layers.L.<blk>.experts.E.down_proj.lora_A.weight [r, I], ….lora_B [H, r]
//   model.layers.L.<blk>.gate.weight [E, H] (trained router, with RouterSave::Saved)
// <blk> = block_sparse_moe (Mixtral) or mlp (Qwen3-MoE). Ranks come from the shapes and may differ per target
// (an imported transformers-4 gate+up adapter has gate_up rank 2r); scaling() uses the config's r for all.
struct AdapterSet {
  int r = 8;                        // adapter_config.json "r": the rank in scaling's denominator
  double alpha = 16.0;              // lora_alpha
  RsLora rslora = RsLora::Off;
  double dropout = 0.0;             // lora_dropout (training only; no effect on the function)
  std::vector<LoraProj> targets;    // sorted, unique
  RouterSave router = RouterSave::Frozen;
  std::map<std::string, AdapterTensor> tensors;

  double scaling() const;           // alpha / r, or alpha / √r with RsLora::On
  bool targets_proj(LoraProj p) const;
};

// Logical names. `layer_prefix(m, l)` style helpers for the adapters of layer l.
std::string lora_attn_name(int layer, LoraProj p, char ab);               // p ∈ {Q,K,V,O}, ab ∈ {'A','B'}
std::string lora_expert_name(const ModelConfig& m, int layer, int expert, LoraProj p, char ab);  // p ∈ {Gate,Down}
const char* lora_proj_name(LoraProj p);  // "q_proj", …, "gate_proj", "up_proj", "down_proj"

// Checks `a` against the model: every targeted projection has its A/B pair in every layer (experts: every MoE layer,
// every expert), shapes [r_t, in] / [out, r_t] with one rank per target and layer, all values finite, the router
// present exactly in every MoE layer iff RouterSave::Saved, no other tensor. BadInput naming `what` and the tensor.
void check_adapter_set(const ModelConfig& m, const AdapterSet& a, const std::string& what);

// Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (fp32) in `layout` (docs/PEFT_LAYOUT.md), each
// through a temporary file renamed into place; creates DIR. Tensors whose rank differs from a.r get rank_pattern and
// alpha_pattern entries keeping their scaling equal to a.scaling(). Fused with expert targets writes lora_dropout 0
// (PEFT refuses dropout on parameter targets; dropout does not change the adapter's function). base_model may be "".
// BadInput when `a` does not fit the model (check_adapter_set) or a file cannot be written.
void write_peft_adapter(const std::string& dir, const ModelConfig& m, const AdapterSet& a, PeftLayout layout,
                        const std::string& base_model);

// Reads a PEFT LoRA adapter of either layout (detected from the tensor names) into the logical tensors: per-expert
// w1/w3 (gate_proj/up_proj) pairs become one gate_up adapter of rank r1 + r3 (A = [A1; A3], B = blockdiag(B1, B3);
// exact), fused ones are unstacked (A expert-major, B expert-minor). A tensor whose rank_pattern/alpha_pattern
// scaling differs from alpha / r gets the ratio folded into its B. BadInput naming the file and the problem for:
// a missing file, a config that is not a plain LoRA (peft_type, use_dora, bias, fan_in_fan_out, lora_bias, …), an
// unknown tensor, a router LoRA, a shape that does not fit the model, a non-finite value, mixed layouts, or
// targets that cover only some layers or experts.
AdapterSet read_peft_adapter(const std::string& dir, const ModelConfig& m);

// Folds the adapter into full-model weights: W += scaling · B @ A for every adapter (fp32 GEMM, per expert and per
// attention projection; gate_up rows split gate [0, I), up [I, 2I) as targeted), and the router replaced when
// a.router is Saved. params [table.total_numel()] fp32 in the layout of build_param_table(m) (full fine-tuning).
void merge_adapter(float* params, const ParamTable& table, const ModelConfig& m, const AdapterSet& a);

}  // namespace moe
