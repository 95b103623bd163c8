// Owns the bridge between a LoRA/QLoRA run's state table (adapters, trained router) and PEFT AdapterSets.
#include "io/peft_state.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace moe {

namespace {

std::string target_list(const std::vector<LoraProj>& ps) {
  std::string s;
  for (LoraProj p : ps) s += std::string(s.empty() ? "" : ", ") + lora_proj_name(p);
  return s.empty() ? "(none)" : s;
}

}  // namespace

LoraSpec run_lora_spec(const Config& cfg, const AdapterSet* from) {
  LoraSpec spec = resolve_lora_spec(cfg.peft, cfg.model);
  if (!from || !spec.active()) return spec;
  const std::string dir = "model.adapter_from " + cfg.model_adapter_from;
  std::vector<LoraProj> want;
  for (int p = 0; p < kLoraProjs; ++p)
    if (spec.targets(LoraProj(p))) want.push_back(LoraProj(p));
  std::vector<LoraProj> have = from->targets;
  std::sort(have.begin(), have.end());
  MT_INPUT_CHECK(have == want, dir, " adapts ", target_list(have), " but peft.targets resolves to ", target_list(want),
                 ": set peft.targets to the adapter's targets to continue it");
  MT_INPUT_CHECK(from->r == spec.r, dir, " has r = ", from->r, " but peft.r = ", spec.r, ": set peft.r: ", from->r);
  MT_INPUT_CHECK(std::abs(from->alpha - spec.alpha) <= 1e-12 * std::max(1.0, std::abs(spec.alpha)), dir,
                 " has lora_alpha = ", from->alpha, " but peft.alpha = ", spec.alpha, ": set peft.alpha: ", from->alpha);
  MT_INPUT_CHECK((from->rslora == RsLora::On) == spec.rslora, dir, " has use_rslora = ",
                 from->rslora == RsLora::On ? "true" : "false", " but peft.use_rslora = ", spec.rslora ? "true" : "false");
  if (spec.gate_up_blocks() > 0) {
    const int l = [&] {
      for (int i = 0; i < cfg.model.num_layers; ++i)
        if (cfg.model.is_moe_layer(i)) return i;
      return -1;
    }();
    if (l >= 0) {
      const std::string a = lora_name(expert_gate_up_name(cfg.model, l, 0), LoraPart::A);
      auto it = from->tensors.find(a);
      MT_INPUT_CHECK(it != from->tensors.end(), dir, ": missing adapter tensor ", a);
      spec.r_gate_up = int(it->second.shape.at(0));
    }
  }
  return spec;
}

AdapterSet adapter_set_from_state(const float* state, const ParamTable& table, const ModelConfig& m,
                                  const LoraSpec& spec, const PeftConfig& peft) {
  MT_CHECK(spec.active(), "adapter_set_from_state: full fine-tuning has no adapters");
  AdapterSet a;
  a.r = spec.r;
  a.alpha = spec.alpha;
  a.rslora = spec.rslora ? RsLora::On : RsLora::Off;
  a.dropout = peft.dropout;
  for (int p = 0; p < kLoraProjs; ++p)
    if (spec.targets(LoraProj(p))) a.targets.push_back(LoraProj(p));
  a.router = spec.train_router ? RouterSave::Saved : RouterSave::Frozen;
  std::vector<std::string> routers;
  for (int l = 0; l < m.num_layers; ++l)
    if (m.is_moe_layer(l)) routers.push_back(layer_names(m, l).router);
  for (const ParamInfo& p : table.entries()) {
    const bool router = a.router == RouterSave::Saved &&
                        std::find(routers.begin(), routers.end(), p.name) != routers.end();
    if (!is_lora_name(p.name) && !router) continue;
    AdapterTensor& t = a.tensors[p.name];
    t.shape = p.shape;
    t.values.assign(state + p.offset, state + p.offset + p.numel);
  }
  return a;
}

int adapter_set_to_unit(const AdapterSet& a, const ParamTable& table, int unit, float* unit_buf) {
  const i64 begin = table.units().at(size_t(unit)).begin;
  int written = 0;
  for (const ParamInfo& p : table.entries()) {
    if (p.unit != unit) continue;
    auto it = a.tensors.find(p.name);
    if (it == a.tensors.end()) continue;  // the router of a frozen-router adapter, embeddings, norms, lm_head
    MT_INPUT_CHECK(it->second.shape == p.shape, "adapter tensor ", p.name, " does not have the run's shape");
    std::memcpy(unit_buf + (p.offset - begin), it->second.values.data(), size_t(p.numel) * sizeof(float));
    ++written;
  }
  return written;
}

}  // namespace moe
