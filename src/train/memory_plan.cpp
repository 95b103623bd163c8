// Owns the dry-run memory arithmetic (fp32 master weights, grads, two AdamW moments, planned activations).
#include "train/memory_plan.h"

#include <sstream>

#include "model/model.h"

namespace moe {

MemoryPlan plan_memory(const Config& cfg) {
  MemoryPlan p;
  Model<float> model(cfg.model, cfg.moe, cfg.train.micro_batch, cfg.train.seq_len, AllocPolicy::PlanOnly);
  p.params = model.table().total_numel();
  const ModelConfig& m = cfg.model;
  const i64 per_expert = 3 * i64(m.hidden_size) * m.expert_width();
  p.active_params = p.params - i64(model.num_moe_layers()) * (m.num_experts - m.top_k) * per_expert;
  p.weight_bytes = p.params * 4;
  p.grad_bytes = p.params * 4;
  p.optim_bytes = p.params * 8;
  p.activation_bytes = model.activation_bytes();
  return p;
}

static std::string gib(i64 b) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(b >= (i64(1) << 30) ? 2 : 1);
  if (b >= (i64(1) << 30)) os << double(b) / double(i64(1) << 30) << " GiB";
  else os << double(b) / double(1 << 20) << " MiB";
  return os.str();
}

std::string format_memory_plan(const Config& cfg, const MemoryPlan& p) {
  std::ostringstream os;
  os << "model: " << (cfg.model.arch == Arch::Mixtral ? "mixtral" : "qwen3_moe") << ", " << cfg.model.num_layers
     << " layers, hidden " << cfg.model.hidden_size << ", " << cfg.model.num_experts << " experts, top-" << cfg.model.top_k << "\n";
  os << "parameters: " << p.params << " (" << double(p.params) / 1e9 << " B), active per token: " << p.active_params
     << " (" << double(p.active_params) / 1e9 << " B)\n";
  os << "memory plan per process (1 rank, fp32 master weights):\n";
  os << "  weights          " << gib(p.weight_bytes) << "\n";
  os << "  gradients        " << gib(p.grad_bytes) << "\n";
  os << "  optimizer (AdamW m, v) " << gib(p.optim_bytes) << "\n";
  os << "  activations      " << gib(p.activation_bytes) << "  (micro_batch " << cfg.train.micro_batch << " x seq_len "
     << cfg.train.seq_len << ")\n";
  os << "  total            " << gib(p.total()) << "\n";
  return os.str();
}

}  // namespace moe
