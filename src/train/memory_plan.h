// Owns the per-rank memory plan printed by --dry-run: weights, grads, optimizer state, ZeRO working buffers, activations.
#pragma once
#include <string>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

struct MemoryPlan {
  int world = 1, ep = 1, zero = 0;
  i64 params = 0;            // logical parameter count of the whole model
  i64 active_params = 0;     // parameters a token touches (top-k experts)
  i64 weight_bytes = 0, grad_bytes = 0, optim_bytes = 0;  // per rank, persistent
  i64 working_bytes = 0;     // per rank, ZeRO-3 gather/reduce buffers
  i64 activation_bytes = 0;  // per rank
  i64 state() const { return weight_bytes + grad_bytes + optim_bytes; }
  i64 total() const { return state() + working_bytes + activation_bytes; }
};

// Sizes everything from the config without allocating (model shape already resolved), for rank 0 of a
// run with `world` ranks, parallel.ep and parallel.zero from the config. Mirrors ParamState's buffers.
MemoryPlan plan_memory(const Config& cfg, int world);
std::string format_memory_plan(const Config& cfg, const MemoryPlan& p);

}  // namespace moe
