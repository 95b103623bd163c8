// Owns the dry-run memory arithmetic (fp32 master weights, grads, two AdamW moments, ZeRO shards, activations).
#include "train/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "model/model.h"

namespace moe {

MemoryPlan plan_memory(const Config& cfg, int world, i64 data_tokens) {
  MemoryPlan p;
  p.world = world;
  p.ep = cfg.parallel.ep;
  p.zero = cfg.parallel.zero;
  const ModelConfig& m = cfg.model;
  MT_INPUT_CHECK(world % p.ep == 0 && m.num_experts % p.ep == 0, "parallel.ep = ", p.ep,
                 " must divide the number of ranks (", world, ") and model.num_experts (", m.num_experts, ")");
  const int edp = world / p.ep;
  ExpertShardSpec shard;
  if (p.ep > 1) {
    shard.first = 0;
    shard.count = m.num_experts / p.ep;
    shard.ep = p.ep;
  }
  const i64 dpad = p.zero >= 1 ? world : 1, xpad = p.zero >= 1 ? edp : 1;
  // Plan-only model: sizes the activation arena and builds rank 0's (padded) parameter table.
  Model<float> model(m, cfg.moe, cfg.train.micro_batch, cfg.train.seq_len,
                     ModelOptions{AllocPolicy::PlanOnly, shard, dpad, xpad, cfg.train.recompute});
  const ParamTable& t = model.table();
  p.params = build_param_table(m).tensor_numel();
  const i64 per_expert = 3 * i64(m.hidden_size) * m.expert_width();
  p.active_params = p.params - i64(model.num_moe_layers()) * (m.num_experts - m.top_k) * per_expert;
  const i64 full = t.total_numel();
  i64 shard_elems = 0, max_unit = 0;
  for (const ParamUnit& u : t.units()) {
    shard_elems += (u.expert_begin - u.begin) / dpad + (u.end - u.expert_begin) / xpad;
    max_unit = std::max(max_unit, u.size());
  }
  if (p.zero == 0) shard_elems = full;
  p.weight_bytes = 4 * (p.zero == 3 ? shard_elems : full);
  p.grad_bytes = 4 * (p.zero == 3 ? shard_elems : full + (p.zero == 2 ? shard_elems : 0));
  p.optim_bytes = 8 * shard_elems;
  p.working_bytes = p.zero == 3 ? 4 * (5 * max_unit) : 0;  // 3 parameter slots + 2 gradient slots
  p.activation_bytes = model.activation_bytes();
  p.data_bytes = 4 * data_tokens;
  p.staging_bytes = 4 * full;  // Trainer::init_params fills the whole local table before ParamState shards it
  return p;
}

std::string human_count(i64 n) {
  static const char* units[] = {"", "K", "M", "B", "T", "P"};
  double v = double(n);
  int u = 0;
  while (std::abs(v) >= 999.5 && u < 5) {
    v /= 1000.0;
    ++u;
  }
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(u == 0 || v >= 99.95 ? 0 : 1);
  os << v << units[u];
  return os.str();
}

std::string human_bytes(i64 b) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = double(b);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(u == 0 ? 0 : 2);
  os << v << " " << units[u];
  return os.str();
}

std::string format_memory_plan(const Config& cfg, const MemoryPlan& p) {
  std::ostringstream os;
  os << "model: " << (cfg.model.arch == Arch::Mixtral ? "mixtral" : "qwen3_moe") << ", " << cfg.model.num_layers
     << " layers, hidden " << cfg.model.hidden_size << ", " << cfg.model.num_experts << " experts, top-" << cfg.model.top_k << "\n";
  os << "parameters: " << p.params << " (" << human_count(p.params) << "), active per token: " << p.active_params << " ("
     << human_count(p.active_params) << ")\n";
  // This build computes and stores everything in fp32 (check_supported refuses train.precision: bf16).
  os << "precision: fp32 (weights, gradients, AdamW moments, activations and compute)";
  if (cfg.train.precision != Precision::Fp32) os << "; train.precision: bf16 is not implemented yet";
  os << "\n";
  const i64 logical_state = 16 * p.params;  // fp32 weights + grads + two AdamW moments of the whole model
  os << "memory plan per rank: world " << p.world << " = ep " << p.ep << " x expert-dp " << p.world / p.ep << ", ZeRO-"
     << p.zero << "\n";
  os << "  weights          " << human_bytes(p.weight_bytes) << "\n";
  os << "  gradients        " << human_bytes(p.grad_bytes) << "\n";
  os << "  optimizer (AdamW m, v) " << human_bytes(p.optim_bytes) << "\n";
  os << "  state subtotal   " << human_bytes(p.state()) << "  (" << double(p.state()) / (double(logical_state) / p.world)
     << " x whole-model state / world)\n";
  if (p.working_bytes) os << "  ZeRO-3 working   " << human_bytes(p.working_bytes) << "  (unit gathers + gradient reduce)\n";
  os << "  activations      " << human_bytes(p.activation_bytes) << "  (micro_batch " << cfg.train.micro_batch << " x seq_len "
     << cfg.train.seq_len << ")\n";
  if (p.data_bytes) os << "  data tokens      " << human_bytes(p.data_bytes) << "  (" << human_count(p.data_bytes / 4) << " tokens as int32)\n";
  os << "  start-up staging " << human_bytes(p.staging_bytes) << "  (fp32 weights before sharding; freed before step 1)\n";
  os << "  total            " << human_bytes(p.total()) << "\n";
  return os.str();
}

}  // namespace moe
