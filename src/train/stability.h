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

// Router-health warnings at logged steps: a warning names the step, the metric, its healthy range and the remedies;
// it repeats at most every `every_logged` logged steps while the health stays degraded, and the recovery is said
// once.
class RouterHealthWatch {
 public:
  explicit RouterHealthWatch(const LoraSpec& lora, int every_logged = 10) : lora_(lora), every_(every_logged) {}
  // health of the global batch at `step`; returns the lines to log (possibly none).
  std::vector<std::string> observe(int step, const RouterHealth& health);

 private:
  LoraSpec lora_;
  int every_;
  int since_ = -1;    // logged steps since the last warning (−1: not degraded)
};

}  // namespace moe
