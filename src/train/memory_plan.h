// Owns the per-rank memory plan printed by --dry-run: weights, grads, optimizer state, bf16 weight copy, ZeRO
// working buffers, activations.
#pragma once
#include <string>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

struct MemoryPlan {
  int world = 1, ep = 1, zero = 0;
  Precision precision = Precision::Fp32;
  i64 params = 0;            // logical parameter count of the whole model
  i64 active_params = 0;     // parameters a token touches (top-k experts)
  i64 weight_bytes = 0, grad_bytes = 0, optim_bytes = 0;  // per rank, persistent (fp32)
  i64 copy_bytes = 0;        // per rank, persistent: the bf16 weight copy (train.precision: bf16)
  i64 grad_slot_bytes = 0;   // per rank: unit gradient slots (ZeRO-2/3) before their reduce-scatter
  i64 working_bytes = 0;     // per rank, every working buffer: ZeRO-3 gather slots + grad_slot_bytes
  i64 activation_bytes = 0;  // per rank
  i64 data_bytes = 0;        // per rank, private: 0 — the token sources are memory-mapped (page cache, shared)
  i64 data_tokens = 0;       // tokens in those mappings (data sources + eval.data), for the report
  i64 staging_bytes = 0;     // per rank, start-up only: the fp32 unit buffer init / HF load / upcycling stage each unit in
  // LoRA/QLoRA: the frozen base linears (BaseWeights: T copies or NF4 blocks, replicated over data parallel) and
  // the dequantization slot (QLoRA), and the trainable parameter count (adapters + router when trained).
  i64 base_bytes = 0, base_slot_bytes = 0;
  i64 trainable_params = 0;
  i64 state() const { return weight_bytes + grad_bytes + optim_bytes + copy_bytes + base_bytes; }
  i64 total() const { return state() + working_bytes + base_slot_bytes + activation_bytes + data_bytes + staging_bytes; }
};

// "950", "12.3K", "1.2M", "46.7B", "305B": counts as people read them (SI units, one decimal below 100).
std::string human_count(i64 n);
// "512.00 MiB", "1.25 GiB", "3.10 TiB".
std::string human_bytes(i64 b);

// Sizes everything from the config without allocating (model shape already resolved), for rank 0 of a
// run with `world` ranks, parallel.ep, parallel.zero and train.precision from the config. State bytes come
// from ParamState::plan_bytes, the function ParamState sizes its own buffers with; data_tokens (the length of data.path, 0 if unknown) sizes the token stream every rank holds.
MemoryPlan plan_memory(const Config& cfg, int world, i64 data_tokens = 0);
std::string format_memory_plan(const Config& cfg, const MemoryPlan& p);

}  // namespace moe
