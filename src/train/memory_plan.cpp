// Owns the dry-run memory plan: state bytes from ParamState's own sizing function, activations from the model's
// arena plan, plus data and start-up staging.
#include "train/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "io/peft_adapter.h"
#include "io/peft_state.h"
#include "model/model.h"
#include "parallel/zero.h"
#include "peft/base_weights.h"
#include "peft/lora.h"

namespace moe {

// What a plan-only model of storage type T says: its padded table (copied out), MoE layer count, activation bytes.
struct PlannedModel {
  ParamTable table;
  ParamTable base;  // LoRA/QLoRA: the frozen base linears
  int num_moe = 0;
  i64 activation_bytes = 0;
};
template <typename T>
static PlannedModel planned_model(const Config& cfg, const ExpertShardSpec& shard, i64 dpad, i64 xpad,
                                  const LoraSpec& lora) {
  Model<T> model(cfg.model, cfg.moe, cfg.train.micro_batch, cfg.train.seq_len,
                 ModelOptions{AllocPolicy::PlanOnly, shard, dpad, xpad, cfg.train.recompute, lora});
  return PlannedModel{model.table(), model.base_table(), model.num_moe_layers(), model.activation_bytes()};
}

MemoryPlan plan_memory(const Config& cfg, int world, i64 data_tokens) {
  MemoryPlan p;
  p.world = world;
  p.ep = cfg.parallel.ep;
  p.zero = cfg.parallel.zero;
  MT_INPUT_CHECK(p.zero >= 0 && p.zero <= 3, "parallel.zero = ", p.zero, " must be 0..3");
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
  // Plan-only model of the run's storage type (bf16 activations under train.precision: bf16): sizes the
  // activation arena as the trainer's model allocates it, and builds rank 0's (padded) parameter table.
  // The adapter shapes the trainer will build: an imported adapter's ranks (model.adapter_from) included.
  LoraSpec lora = resolve_lora_spec(cfg.peft, m);
  if (lora.active() && !cfg.model_adapter_from.empty()) {
    const AdapterSet from = read_peft_adapter(cfg.model_adapter_from, m);
    lora = run_lora_spec(cfg, &from);
  }
  const PlannedModel model = cfg.train.precision == Precision::Bf16 ? planned_model<bf16>(cfg, shard, dpad, xpad, lora)
                                                                     : planned_model<float>(cfg, shard, dpad, xpad, lora);
  const ParamTable& t = model.table;
  p.params = build_param_table(m).tensor_numel();
  const i64 per_expert = 3 * i64(m.hidden_size) * m.expert_width();
  p.active_params = p.params - i64(model.num_moe) * (m.num_experts - m.top_k) * per_expert;
  p.precision = cfg.train.precision;
  const StateBytes sb = ParamState::plan_bytes(t, p.zero, world, edp, p.precision);
  p.weight_bytes = sb.params;
  p.grad_bytes = sb.grads;
  p.optim_bytes = sb.optimizer;
  p.copy_bytes = sb.compute_copy;
  p.grad_slot_bytes = sb.grad_slots;
  p.working_bytes = sb.working;
  p.trainable_params = build_param_table(m, lora).trainable_numel();
  if (cfg.peft.method != PeftMethod::Full) {
    const BaseStorage kind = cfg.peft.method == PeftMethod::Qlora ? BaseStorage::Nf4 : BaseStorage::Dense;
    const Nf4DoubleQuant dq = cfg.peft.double_quant ? Nf4DoubleQuant::on : Nf4DoubleQuant::off;
    const DType dt = p.precision == Precision::Bf16 ? DType::BF16 : DType::F32;
    const i64 all = BaseWeights<float>::plan_bytes(model.base, kind, dq, dt);  // stored base + NF4 slot
    i64 max_unit = 0;
    for (const ParamUnit& u : model.base.units()) max_unit = std::max(max_unit, u.size());
    p.base_slot_bytes = kind == BaseStorage::Nf4 ? dtype_bytes(dt, max_unit) : 0;
    p.base_bytes = all - p.base_slot_bytes;
  }
  p.activation_bytes = model.activation_bytes;
  p.data_tokens = data_tokens;  // memory-mapped: in the page cache, shared by the ranks of a machine, not private
  // Trainer::init_params stages one unit at a time in one fp32 buffer of the largest unit; upcycling also
  // converts one dense tensor at a time (the same shape as the entries it fills).
  i64 max_unit = 0, max_entry = 0;
  for (const ParamUnit& u : t.units()) max_unit = std::max(max_unit, u.size());
  for (const ParamUnit& u : model.base.units()) max_unit = std::max(max_unit, u.size());  // LoRA/QLoRA base units
  for (const ParamInfo& e : t.entries()) max_entry = std::max(max_entry, e.numel);
  p.staging_bytes = 4 * (max_unit + (cfg.upcycle.from.empty() ? 0 : max_entry));
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
  const bool bf = p.precision == Precision::Bf16;
  if (bf)
    os << "precision: bf16 (fp32 master weights, fp32 gradients, fp32 AdamW moments; bf16 weight copy and activations; "
          "router weight, norm gains, router/norm/softmax statistics and losses in fp32)\n";
  else
    os << "precision: fp32 (weights, gradients, AdamW moments, activations and compute)\n";
  // fp32 weights + grads + two AdamW moments (+ the bf16 copy) of the whole model
  // fp32 weights + grads + two moments (+ the bf16 copy where it is state: ZeRO 0-2; ZeRO-3 rounds into working slots).
  const i64 logical_state = (bf && p.zero < 3 ? 18 : 16) * p.params;
  os << "memory plan per rank: world " << p.world << " = ep " << p.ep << " x expert-dp " << p.world / p.ep << ", ZeRO-"
     << p.zero << "\n";
  os << "  weights          " << human_bytes(p.weight_bytes) << "\n";
  os << "  gradients        " << human_bytes(p.grad_bytes) << "\n";
  os << "  optimizer (AdamW m, v) " << human_bytes(p.optim_bytes) << "\n";
  if (bf && p.zero == 3)
    os << "  bf16 weight copy " << human_bytes(p.copy_bytes) << "  (ZeRO-3: each gathered unit is rounded into a bf16 "
          "working slot)\n";
  else if (bf)
    os << "  bf16 weight copy " << human_bytes(p.copy_bytes) << "  (the model's weights, refreshed after each update)\n";
  if (cfg.peft.method != PeftMethod::Full) {
    const bool q = cfg.peft.method == PeftMethod::Qlora;
    os << "  frozen base      " << human_bytes(p.base_bytes) << "  ("
       << (q ? (cfg.peft.double_quant ? "NF4 + double quant" : "NF4") : (bf ? "bf16" : "fp32"))
       << " base linears, replicated over data parallel; " << human_count(p.trainable_params) << " trainable params)\n";
    if (q) os << "  dequant slot     " << human_bytes(p.base_slot_bytes) << "  (one base unit at a time)\n";
  }
  os << "  state subtotal   " << human_bytes(p.state()) << "  (" << double(p.state()) / (double(logical_state) / p.world)
     << " x whole-model state / world)\n";
  if (p.working_bytes) {
    if (p.zero == 3)
      os << "  ZeRO-3 working   " << human_bytes(p.working_bytes) << "  (unit gathers + " << human_bytes(p.grad_slot_bytes)
         << " unit gradient slots" << (bf ? "; fp32 gathers + bf16 rounded copies" : "") << ")\n";
    else
      os << "  gradient slots   " << human_bytes(p.working_bytes) << "  (unit gradients before their reduce-scatter)\n";
  }
  static const char* recompute_names[] = {"none", "selective", "full"};
  os << "  activations      " << human_bytes(p.activation_bytes) << "  (micro_batch " << cfg.train.micro_batch << " x seq_len "
     << cfg.train.seq_len << ", train.recompute: " << recompute_names[int(cfg.train.recompute)] << ")\n";
  if (p.data_tokens)
    os << "  data tokens      " << human_count(p.data_tokens) << " tokens, memory-mapped (page cache, shared by the ranks; "
       << "not counted)\n";
  os << "  start-up staging " << human_bytes(p.staging_bytes) << "  (fp32, one parameter unit at a time before sharding; freed before step 1)\n";
  os << "  total            " << human_bytes(p.total()) << "\n";
  return os.str();
}

}  // namespace moe
