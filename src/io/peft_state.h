// Owns the bridge between a LoRA/QLoRA run's state table (adapters, trained router) and PEFT AdapterSets.
#pragma once
#include <string>

#include "config/config.h"
#include "io/peft_adapter.h"
#include "model/param_table.h"
#include "peft/lora.h"

namespace moe {

// The run's adapter shape with an imported adapter taken into account: resolve_lora_spec(cfg.peft, cfg.model), and
// with `from` (model.adapter_from) its targets, r, alpha and use_rslora checked against peft.* (BadInput naming the
// key and both values: the run continues that adapter, so they must agree) and r_gate_up taken from its gate_up
// shapes (a transformers-4 adapter with separate gate and up LoRAs imports as one gate_up adapter of rank 2r).
LoraSpec run_lora_spec(const Config& cfg, const AdapterSet* from);

// The AdapterSet of a full host copy of the state table: every lora_A/lora_B entry, plus the router of every MoE
// layer when spec.train_router (RouterSave::Saved). state [table.total_numel()] fp32 in `table`'s layout
// (build_param_table(m, spec)); r, alpha, use_rslora and dropout from spec / peft.
AdapterSet adapter_set_from_state(const float* state, const ParamTable& table, const ModelConfig& m,
                                  const LoraSpec& spec, const PeftConfig& peft);

// Overwrites the entries of unit `unit` that `a` holds (adapters by logical name; the router when a.router is
// Saved) in `unit_buf`, the unit's values starting at table.units()[unit].begin. Shapes were checked by
// run_lora_spec/read_peft_adapter; a mismatch here is BadInput naming the tensor. Returns the entries written.
int adapter_set_to_unit(const AdapterSet& a, const ParamTable& table, int unit, float* unit_buf);

}  // namespace moe
