// Owns the stability advice of MoE fine-tuning practice (see stability.h).
#include "train/stability.h"

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

std::vector<std::string> RouterHealthWatch::observe(int step, const RouterHealth& h) {
  std::vector<std::string> out;
  const bool degraded = h.expert_utilization < kUtilizationFloor || h.load_imbalance > kImbalanceCeiling;
  if (!degraded) {
    if (since_ >= 0) {
      std::ostringstream w;
      w << "step " << step << ": router health recovered (utilization " << h.expert_utilization << ", imbalance "
        << h.load_imbalance << ")";
      out.push_back(w.str());
    }
    since_ = -1;
    return out;
  }
  if (since_ >= 0 && ++since_ < every_) return out;
  since_ = 0;
  std::ostringstream w;
  w << "step " << step << ": router health degraded: expert_utilization " << h.expert_utilization
    << " (healthy 0.7-1.0, below " << kUtilizationFloor << " is collapse), load_imbalance " << h.load_imbalance
    << " (healthy < 2.5, above " << kImbalanceCeiling << " is severe). Remedies: lower train.lr 2-5x; raise "
    << "moe.aux_loss_coef (e.g. 0.05) and moe.z_loss_coef (e.g. 0.01); a longer warmup; train.grad_clip 0.5; a "
    << "larger effective batch (train.grad_accum)";
  if (lora_.active() && !lora_.train_router) w << "; unfreeze the router with peft.train_router: true";
  if (lora_.active() && lora_.train_router) w << "; or freeze the router (peft.train_router: false) if it drifts";
  out.push_back(w.str());
  return out;
}

}  // namespace moe
