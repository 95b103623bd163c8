// Owns the stability advice of MoE fine-tuning practice (see stability.h).
#include "train/stability.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace moe {

std::vector<std::string> recipe_advice(const Config& c, const LoraSpec& lora, int world) {
  std::vector<std::string> out;
  if (lora.active() && c.model.num_experts > 1 && !lora.any_expert())
    out.push_back("peft.targets adapt no expert: the experts hold most of an MoE model's weights, and adapters on "
                  "attention alone leave them untouched; add w1, w2, w3 (gate_proj, up_proj, down_proj) to "
                  "peft.targets to fine-tune every expert");
  if (lora.active() && (c.train.lr < kLoraLrLow || c.train.lr > kLoraLrHigh)) {
    std::ostringstream w;
    w << "train.lr " << c.train.lr << " is outside the usual LoRA-on-MoE range " << kLoraLrLow << " .. "
      << kLoraLrHigh << " (1e-4 .. 2e-4 is typical; start at 1e-5 .. 5e-5 on Mixtral and lower it 2-5x if the loss "
      << "or the router becomes unstable)";
    out.push_back(w.str());
  }
  const double tokens = double(c.train.micro_batch) * c.train.seq_len * c.train.grad_accum * world;
  if (tokens < kSmallBatchFraction * kStMoeTokensPerStep) {
    const double per_accum = double(c.train.micro_batch) * c.train.seq_len * world;
    const long want = long(std::ceil(kStMoeTokensPerStep / per_accum));
    std::ostringstream w;
    w << "the effective batch is " << long(tokens) << " tokens per optimizer step, far below the ~64k of ST-MoE "
      << "practice: small batches make routing statistics noisy (expert load, aux loss) and destabilise the router; "
      << "set train.grad_accum: " << want << " to reach ~" << long(double(want) * per_accum) << " tokens per step";
    out.push_back(w.str());
  }
  return out;
}

RouterVerdict router_verdict(const LayerRouterHealth& h) {
  if (h.utilization < kUtilizationFloor || h.imbalance > kImbalanceCeiling) return RouterVerdict::Collapse;
  if (h.utilization < kUtilizationHealthy || h.imbalance > kImbalanceHealthy) return RouterVerdict::Degraded;
  return RouterVerdict::Healthy;
}

namespace {

// "layer 3 expert_utilization 0.25, load_imbalance 4.1; layer 5 ..." for at most 4 layers (worst first).
std::string describe_layers(std::vector<const LayerRouterHealth*> bad) {
  std::sort(bad.begin(), bad.end(), [](const LayerRouterHealth* a, const LayerRouterHealth* b) {
    return a->utilization - a->imbalance / 10 < b->utilization - b->imbalance / 10;
  });
  std::ostringstream w;
  for (size_t i = 0; i < bad.size() && i < 4; ++i)
    w << (i ? "; " : "") << "layer " << bad[i]->layer << " expert_utilization " << bad[i]->utilization
      << ", load_imbalance " << bad[i]->imbalance;
  if (bad.size() > 4) w << " (+" << bad.size() - 4 << " more layers)";
  return w.str();
}

std::string balance_remedies(const MoeConfig& moe, const LoraSpec& lora) {
  std::ostringstream w;
  w << "Remedies: raise moe.aux_loss_coef (now " << moe.aux_loss_coef << "; e.g. "
    << std::max(0.05, 2 * moe.aux_loss_coef) << ") and moe.z_loss_coef (now " << moe.z_loss_coef << "; e.g. "
    << std::max(0.001, 2 * moe.z_loss_coef) << "); lower train.lr 2-5x; ";
  if (moe.router_jitter == 0) w << "enable moe.router_jitter (e.g. 0.01); ";
  w << "a longer warmup; train.grad_clip 0.5; a larger effective batch (train.grad_accum)";
  if (lora.active() && !lora.train_router) w << "; unfreeze the router with peft.train_router: true";
  if (lora.active() && lora.train_router) w << "; or freeze the router (peft.train_router: false) if it drifts";
  return w.str();
}

}  // namespace

bool RouterHealthWatch::due(Kind k, bool bad) {
  if (!bad) {
    since_[k] = -1;
    return false;
  }
  if (since_[k] >= 0 && ++since_[k] < every_) return false;
  since_[k] = 0;
  return true;
}

std::vector<std::string> RouterHealthWatch::observe(int step, const std::vector<LayerRouterHealth>& layers) {
  std::vector<std::string> out;
  std::vector<const LayerRouterHealth*> degraded, aux_high, z_high;
  bool collapse = false;
  const double z_floor = num_experts_ > 1 ? 1.5 * std::pow(std::log(double(num_experts_)), 2) : 0.0;
  const double aux_balanced = moe_.aux_loss_form == AuxForm::Hf ? double(top_k_) : 1.0;
  for (const LayerRouterHealth& h : layers) {
    const RouterVerdict v = router_verdict(h);
    if (v != RouterVerdict::Healthy) degraded.push_back(&h);
    collapse |= v == RouterVerdict::Collapse;
    if (moe_.aux_loss_coef * h.aux > kAuxWeightedHigh && h.aux > 1.25 * aux_balanced) aux_high.push_back(&h);
    if (moe_.z_loss_coef > 0 && moe_.z_loss_coef * h.z >= kZWeightedHigh && h.z > z_floor) z_high.push_back(&h);
  }
  const bool was_degraded = since_[kBalance] >= 0;
  if (due(kBalance, !degraded.empty())) {
    std::ostringstream w;
    w << "step " << step << ": router health degraded" << (collapse ? " (collapse)" : "") << " in "
      << degraded.size() << " of " << layers.size() << " MoE layers: " << describe_layers(degraded)
      << " (healthy: utilization 0.7-1.0, below " << kUtilizationFloor << " is collapse; imbalance < 2.5, above "
      << kImbalanceCeiling << " is severe). " << balance_remedies(moe_, lora_);
    out.push_back(w.str());
  } else if (degraded.empty() && was_degraded) {
    out.push_back("step " + std::to_string(step) + ": router health recovered in every MoE layer");
  }
  if (due(kAux, !aux_high.empty())) {
    std::ostringstream w;
    w << "step " << step << ": aux loss x moe.aux_loss_coef above the healthy 0.01-0.1 in layer " << aux_high[0]->layer
      << " (" << moe_.aux_loss_coef * aux_high[0]->aux << "; aux " << aux_high[0]->aux << ", " << aux_balanced
      << " at perfect balance)";
    if (aux_high.size() > 1) w << " and " << aux_high.size() - 1 << " more layers";
    w << ": routing stays unbalanced although the balancing term is strong (moe.aux_loss_coef " << moe_.aux_loss_coef
      << "): lower train.lr 2-5x, enable moe.router_jitter";
    if (lora_.active() && lora_.train_router) w << ", or freeze the router (peft.train_router: false)";
    out.push_back(w.str());
  }
  if (due(kZ, !z_high.empty())) {
    std::ostringstream w;
    w << "step " << step << ": router z-loss x moe.z_loss_coef above the healthy 0.01 in layer " << z_high[0]->layer
      << " (" << moe_.z_loss_coef * z_high[0]->z << ", z " << z_high[0]->z << ", router logit norm "
      << z_high[0]->logit_norm << ")";
    if (z_high.size() > 1) w << " and " << z_high.size() - 1 << " more layers";
    w << ": the router logits are large (they lose precision in bf16 and make routing brittle): lower train.lr, "
      << "enable moe.router_jitter, raise moe.z_loss_coef (now " << moe_.z_loss_coef << ") to pull them back";
    if (lora_.active() && lora_.train_router) w << ", or freeze the router (peft.train_router: false)";
    out.push_back(w.str());
  }
  return out;
}

std::string collapse_message(int step, const std::vector<LayerRouterHealth>& layers, const MoeConfig& moe,
                             const LoraSpec& lora) {
  std::vector<const LayerRouterHealth*> bad;
  for (const LayerRouterHealth& h : layers)
    if (router_verdict(h) == RouterVerdict::Collapse) bad.push_back(&h);
  if (bad.empty()) return "";
  std::ostringstream w;
  w << "router collapse at step " << step << " (train.stop_on_collapse): " << describe_layers(bad)
    << " (collapse: utilization < " << kUtilizationFloor << " or imbalance > " << kImbalanceCeiling
    << "). Stopped after this step's update; checkpoints already written are kept. " << balance_remedies(moe, lora)
    << "; then resume from the last checkpoint (or start again)";
  return w.str();
}

}  // namespace moe
