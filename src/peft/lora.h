// Owns what a LoRA/QLoRA run adapts: the resolved targets, rank and scaling, the logical adapter names, and PEFT's init.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

// The linear projections LoRA can adapt. Gate = Mixtral w1 / Qwen gate_proj, Up = w3 / up_proj, Down = w2 / down_proj
// of every expert; Q/K/V/O the attention projections. The router is never one of them.
enum class LoraProj : uint8_t { Q, K, V, O, Gate, Up, Down };
constexpr int kLoraProjs = 7;

// Which half of an adapter: A [r, in] (applied first) or B [out, r].
enum class LoraPart : uint8_t { A, B };

// A LoRA/QLoRA run's adapter shape. method Full = no adapters (every other field unused).
// Expert adapters (docs/DESIGN.md §11): gate and up share one A per expert ("gate_up", rank r_gate_up; B rows gate
// first, one I-row block per targeted projection), down has its own (rank r).
struct LoraSpec {
  PeftMethod method = PeftMethod::Full;
  int r = 0;             // rank of attention and down adapters
  int r_gate_up = 0;     // rank of the gate_up adapters (= r unless an imported adapter says otherwise)
  double alpha = 0;
  bool rslora = false;   // scaling alpha/√r instead of alpha/r (PEFT use_rslora)
  bool train_router = false;
  double dropout = 0;    // PEFT lora_dropout on every adapter's input, training only (backend/dense_ops.h LoraDropout)
  uint8_t mask = 0;      // bit p set: LoraProj p targeted
  bool active() const { return method != PeftMethod::Full; }
  bool targets(LoraProj p) const { return (mask >> int(p)) & 1; }
  bool any_expert() const { return targets(LoraProj::Gate) || targets(LoraProj::Up) || targets(LoraProj::Down); }
  bool any_attention() const {
    return targets(LoraProj::Q) || targets(LoraProj::K) || targets(LoraProj::V) || targets(LoraProj::O);
  }
  // I-row blocks of a gate_up adapter's B: 0, 1 (gate or up) or 2 (both, gate first).
  int gate_up_blocks() const { return int(targets(LoraProj::Gate)) + int(targets(LoraProj::Up)); }
  // PEFT's scaling: alpha / r, or alpha / √r with use_rslora (peft LoraLayer.update_layer).
  double scaling() const;
};

// The spec of cfg.peft for model m. BadInput (exit 2) naming the key when a target matches nothing, names the
// router (it is never LoRA-wrapped: a rank-r adapter on Linear(H, E) is as large as the router itself for r ≥ E/2,
// and low-rank updates of the routing logits are what the field reports as router drift; use
// peft.train_router instead), asks for MLP adapters on a model with dense-MLP layers, or lists no target.
// Accepted names: q_proj k_proj v_proj o_proj; w1|gate_proj, w3|up_proj, w2|down_proj (Mixtral and Qwen
// spellings, optionally with a module prefix such as "experts." or "self_attn."); gate_up_proj; all-linear.
LoraSpec resolve_lora_spec(const PeftConfig& peft, const ModelConfig& m);

// The logical (checkpoint) name of an adapter half of base weight `base_name` ("….weight" → "….lora_A.weight").
std::string lora_name(const std::string& base_name, LoraPart part);
// Expert adapters of layer l, expert e: "model.layers.L.<block>.experts.E.gate_up_proj.weight" or
// "….down_proj.weight" (block_sparse_moe for Mixtral, mlp for Qwen3-MoE) — base names for lora_name().
std::string expert_gate_up_name(const ModelConfig& m, int layer, int expert);
std::string expert_down_name(const ModelConfig& m, int layer, int expert);
// True when `name` is a LoRA half (contains ".lora_A." or ".lora_B.").
bool is_lora_name(const std::string& name);

// PEFT's init of one adapter half, seeded: A ~ U(−1/√in, 1/√in) (torch kaiming_uniform_ with a = √5, as PEFT's
// reset_lora_parameters does), B = 0. shape: [r, in] for A, [out, r] for B. The draws are Philox(seed, Init) at
// (element, name_stream(name)), so every layout draws the same values for the same tensor.
void lora_init(float* out, const std::string& name, const std::vector<i64>& shape, uint64_t seed);

}  // namespace moe
