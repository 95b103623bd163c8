// Owns the stability advice of MoE fine-tuning practice: start-up checks of the recipe and router-health warnings.
#pragma once
#include <string>
#include <vector>

#include "config/config.h"
#include "peft/lora.h"
#include "train/router_health.h"

namespace moe {

// Usual ranges the advice is measured against (seed documents of the project: LoRA on Mixtral/Qwen3-MoE is run at
// 1e-5 … 2e-4, "start conservatively"; ST-MoE trains with ~64k tokens per step; healthy routing has utilization
// 0.7–1.0 and imbalance < 2.5, collapse shows as utilization < 0.5 or imbalance > 4).
constexpr double kLoraLrLow = 5e-6, kLoraLrHigh = 5e-4;
constexpr double kStMoeTokensPerStep = 65536;
constexpr double kSmallBatchFraction = 0.25;  // warn below a quarter of it
constexpr double kUtilizationFloor = 0.5, kImbalanceCeiling = 4.0;

// Advice on the recipe itself, before step 1 (empty when nothing applies): LoRA/QLoRA adapting no expert of an
// MoE model, lr outside [kLoraLrLow, kLoraLrHigh] for LoRA/QLoRA, tokens per optimizer step below
// kSmallBatchFraction · kStMoeTokensPerStep (with the train.grad_accum that reaches it).
std::vector<std::string> recipe_advice(const Config& cfg, const LoraSpec& lora, int world);

// Healthy ranges of router health (seed documents: utilization 0.7–1.0, imbalance < 2.5; aux 0.01–0.1 and z < 0.01
// as weighted terms, i.e. times moe.aux_loss_coef / moe.z_loss_coef).
constexpr double kUtilizationHealthy = 0.7, kImbalanceHealthy = 2.5;
constexpr double kAuxWeightedHigh = 0.1, kZWeightedHigh = 0.01;

enum class RouterVerdict { Healthy, Degraded, Collapse };
// Collapse: utilization < kUtilizationFloor or imbalance > kImbalanceCeiling; Degraded: outside the healthy ranges.
RouterVerdict router_verdict(const LayerRouterHealth& h);

// Router-health warnings at logged steps, per MoE layer. A warning names the step, the layers, the metric with its
// healthy range and the remedies. Three kinds, each repeated at most every `every_logged` logged steps while it
// lasts:
//   balance  utilization / imbalance outside the healthy range (collapse or degraded); its recovery is said once;
//   aux      aux_loss_coef·aux > 0.1 while aux is past 1.25× its value at perfect balance (1 in the layer form,
//            top_k in the hf form): routing stays unbalanced although the balancing term is strong. Neither a large
//            coefficient alone (the weighted value at perfect balance is coef·1 or coef·top_k) nor the low side of
//            the range is warned on;
//   z        z_loss_coef·z ≥ 0.01 while z is past 1.5·(ln E)² (the floor lse² of equal logits): the logits are large.
class RouterHealthWatch {
 public:
  RouterHealthWatch(const LoraSpec& lora, const MoeConfig& moe, int num_experts, int top_k, int every_logged = 10)
      : lora_(lora), moe_(moe), num_experts_(num_experts), top_k_(top_k), every_(every_logged) {}
  // layers: the global batch's per-layer health at `step`; returns the lines to log (possibly none).
  std::vector<std::string> observe(int step, const std::vector<LayerRouterHealth>& layers);

 private:
  enum Kind { kBalance, kAux, kZ, kKinds };
  bool due(Kind k, bool bad);  // rate limit; false when not bad or repeated too soon
  LoraSpec lora_;
  MoeConfig moe_;
  int num_experts_;
  int top_k_;
  int every_;
  int since_[kKinds] = {-1, -1, -1};  // logged steps since the last warning of each kind (−1: not bad)
};

// The message train.stop_on_collapse stops with (exit 3): the collapsed layers and the remedies; "" when none.
std::string collapse_message(int step, const std::vector<LayerRouterHealth>& layers, const MoeConfig& moe,
                             const LoraSpec& lora);

}  // namespace moe
