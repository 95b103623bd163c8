// Owns the per-process memory plan printed by --dry-run: weights, grads, optimizer state, activations.
#pragma once
#include <string>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

struct MemoryPlan {
  i64 params = 0;            // parameter count
  i64 active_params = 0;     // parameters a token touches (top-k experts)
  i64 weight_bytes = 0, grad_bytes = 0, optim_bytes = 0, activation_bytes = 0;
  i64 total() const { return weight_bytes + grad_bytes + optim_bytes + activation_bytes; }
};

// Sizes everything from the config without allocating (model shape already resolved).
MemoryPlan plan_memory(const Config& cfg);
std::string format_memory_plan(const Config& cfg, const MemoryPlan& p);

}  // namespace moe
