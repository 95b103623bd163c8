// Owns the mapping of a metrics.jsonl line onto TensorBoard tags (log.tensorboard): one scalar per numeric field,
// one expert-load histogram per MoE layer.
#pragma once
#include <nlohmann/json.hpp>
#include <vector>

#include "io/tensorboard/event_writer.h"

namespace moe {

// Writes every metric of one metrics.jsonl line `line` (its "step" is the TensorBoard step) and flushes:
//   top-level number k          → "train/<k>"  (eval_<x> → "eval/<x>")
//   router_layers[i].<k>        → "router/layer<L>/<k>"  (L = the decoder layer, router_layers[i].layer)
//   expert_load[i] (list of E)  → histogram "expert_load/layer<L>" over the expert index (eval_expert_load →
//                                 "eval/expert_load/layer<L>"), L = moe_layers[i]
// moe_layers: the decoder layer of each MoE layer, in order (Qwen3 dense layers have none). null fields (a metric
// not measured at this step) are skipped. Errors: BadInput naming the event file.
void log_metrics_to_tensorboard(tb::TbEventWriter& w, const nlohmann::json& line, const std::vector<int>& moe_layers);

}  // namespace moe
