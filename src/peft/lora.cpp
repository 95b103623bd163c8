// Owns LoRA target resolution, adapter names and PEFT's adapter init (see lora.h).
#include "peft/lora.h"

#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace moe {

double LoraSpec::scaling() const { return rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
// The last dot-separated component of a target name ("experts.w1" → "w1", "self_attn.q_proj" → "q_proj").
std::string leaf(const std::string& s) {
  const size_t dot = s.rfind('.');
  return dot == std::string::npos ? s : s.substr(dot + 1);
}
}  // namespace

LoraSpec resolve_lora_spec(const PeftConfig& peft, const ModelConfig& m) {
  LoraSpec s;
  s.method = peft.method;
  if (!s.active()) return s;
  s.r = s.r_gate_up = peft.r;
  s.alpha = peft.alpha;
  s.rslora = peft.use_rslora;
  s.train_router = peft.train_router;
  s.dropout = peft.dropout;
  MT_INPUT_CHECK(!peft.targets.empty(),
                 "peft.targets: empty; list the projections to adapt, e.g. [q_proj, k_proj, v_proj, o_proj, w1, w2, w3] "
                 "(or all-linear)");
  auto set = [&](LoraProj p) { s.mask |= uint8_t(1u << int(p)); };
  for (const std::string& t : peft.targets) {
    const std::string n = leaf(t);
    if (n == "all-linear") {
      s.mask = uint8_t((1u << kLoraProjs) - 1);
    } else if (n == "q_proj") set(LoraProj::Q);
    else if (n == "k_proj") set(LoraProj::K);
    else if (n == "v_proj") set(LoraProj::V);
    else if (n == "o_proj") set(LoraProj::O);
    else if (n == "w1" || n == "gate_proj") set(LoraProj::Gate);
    else if (n == "w3" || n == "up_proj") set(LoraProj::Up);
    else if (n == "w2" || n == "down_proj") set(LoraProj::Down);
    else if (n == "gate_up_proj") {
      set(LoraProj::Gate);
      set(LoraProj::Up);
    } else if (n == "gate" || n == "router" || ends_with(t, "block_sparse_moe.gate") || ends_with(t, "mlp.gate")) {
      MT_INPUT_FAIL("peft.targets: '", t, "' is the router (Linear(hidden, num_experts)); it is never LoRA-wrapped: ",
                    "a rank-r adapter on it is as large as the router itself once r >= num_experts/2, and low-rank ",
                    "updates of the routing logits are a known source of router drift and collapse. Train it fully ",
                    "with peft.train_router: true, or keep it frozen with peft.train_router: false");
    } else {
      MT_INPUT_FAIL("peft.targets: '", t, "' matches no projection of this ", m.arch == Arch::Mixtral ? "Mixtral" : "Qwen3-MoE",
                    " model (accepted: q_proj k_proj v_proj o_proj, w1|gate_proj w3|up_proj w2|down_proj, gate_up_proj, ",
                    "all-linear)");
    }
  }
  if (s.any_expert()) {
    bool dense_layer = false;
    for (int l = 0; l < m.num_layers; ++l) dense_layer = dense_layer || !m.is_moe_layer(l);
    MT_INPUT_CHECK(!dense_layer, "peft.targets: MLP adapters (w1/w2/w3, gate/up/down_proj) on a model with dense-MLP ",
                   "layers (mlp_only_layers / decoder_sparse_step) are not implemented; target the attention ",
                   "projections only, or use a model whose every layer is MoE");
  }
  return s;
}

std::string lora_name(const std::string& base_name, LoraPart part) {
  static const std::string w = ".weight";
  MT_CHECK(ends_with(base_name, w), "lora_name: '", base_name, "' is not a weight name");
  return base_name.substr(0, base_name.size() - w.size()) + (part == LoraPart::A ? ".lora_A.weight" : ".lora_B.weight");
}

static std::string expert_prefix(const ModelConfig& m, int l, int e) {
  return "model.layers." + std::to_string(l) + (m.arch == Arch::Mixtral ? ".block_sparse_moe" : ".mlp") + ".experts." +
         std::to_string(e) + ".";
}
std::string expert_gate_up_name(const ModelConfig& m, int l, int e) {
  return expert_prefix(m, l, e) + "gate_up_proj.weight";
}
std::string expert_down_name(const ModelConfig& m, int l, int e) { return expert_prefix(m, l, e) + "down_proj.weight"; }

bool is_lora_name(const std::string& name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
}

void lora_init(float* out, const std::string& name, const std::vector<i64>& shape, uint64_t seed) {
  MT_CHECK(shape.size() == 2, "lora_init: ", name, " is not 2-D");
  const i64 n = shape[0] * shape[1];
  if (name.find(".lora_B.") != std::string::npos) {
    for (i64 i = 0; i < n; ++i) out[i] = 0.f;
    return;
  }
  // kaiming_uniform_(a=√5): gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√fan_in.
  const double bound = 1.0 / std::sqrt(double(shape[1]));
  const Philox ph(seed, RngPurpose::Init);
  const uint32_t stream = name_stream(name);
  for (i64 i = 0; i < n; ++i) out[i] = float(bound * (2.0 * ph.uniform(uint64_t(i), stream, 1) - 1.0));
}

}  // namespace moe
