// Owns one MoE block: router → plan → dispatcher → experts → combine, with jitter, capacity and expert dropout [C4.router..C4.capacity].
#pragma once
#include <memory>
#include <vector>

#include "backend/moe_ops.h"
#include "config/config.h"
#include "core/arena.h"
#include "core/rng.h"
#include "comm/communicator.h"
#include "moe/dispatcher.h"
#include "moe/experts.h"
#include "moe/lora_experts.h"
#include "moe/phase_timer.h"
#include "moe/plan.h"
#include "moe/router.h"

namespace moe {

enum class Mode { Train, Eval };  // jitter and dropout act in Train only

// Where this layer's random draws come from: (seed, step, layer, global micro-batch), never the rank.
struct RngCtx {
  uint64_t seed = 0;
  uint32_t step = 0;
  int layer = 0;
  int global_micro = 0;
};

// Router statistics of one forward, reduced by the model into aux/z values and metrics (host copies).
struct RouterStats {
  std::vector<i64> routed;        // [E] top-k assignments before dropping
  std::vector<double> prob_sum;   // [E] Σ_t probs[t, e]
  double lse_sq_sum = 0;          // Σ_t logsumexp(logits_t)²
  double logit_sq_sum = 0;        // Σ_t ‖logits_t‖² (router logit norm = sqrt(logit_sq_sum / T))
  i64 dropped = 0, pairs = 0;
};

template <typename T>
class MoeLayer {
 public:
  using A = acc_t<T>;
  // Every op goes through `ops`; `scratch` (shared by the model's MoE layers) is reserved by the caller with
  // MoeScratch::reserve for the same config and shard, and must outlive the layer.
  // lora (LoRA/QLoRA runs): the experts are LoraMlpExperts over `dense` (frozen base + split-LoRA adapters);
  // null: the grouped SwiGLU experts of the MoE op table.
  MoeLayer(MoeOps<T>& ops, i64 Tn, i64 H, i64 E, i64 K, i64 I, const MoeConfig& cfg, TopkNorm norm,
           const ExpertShardSpec& shard, MoeScratch<T>& scratch, Arena& arena, DenseOps<T>* dense = nullptr,
           const ExpertLoraShape* lora = nullptr);

  // out [T,H] = MoE(x [T,H]); x must stay valid until backward. bias [E] (selection only) may be null.
  // w holds the local experts. Collective over the EP group.
  void forward(T* out, const T* x, const A* Wg, const ExpertWeights<T>& w, const float* bias, const RngCtx& rng,
               Mode mode);

  // Wg [E,H] / dWg: the router weight and its gradient in A (fp32 under bf16, DESIGN §8).
  // dx [T,H] overwritten. aux_dp [E] = dLoss/dprobs[t,e] (same for every t); z_scale = dLoss/d(mean_t lse²).
  void backward(T* dx, const T* dout, const A* Wg, const ExpertWeights<T>& w, A* dWg, ExpertGrads<T>& g,
                const double* aux_dp, double z_scale);

  const RoutingPlan& plan() const { return plan_; }
  const RouterStats& stats() const { return stats_; }
  const TokenDispatcher<T>& dispatcher() const { return *dispatcher_; }
  // Times every phase of forward and backward (moe/moe_phase.h) on `t`; null (the default) times nothing.
  void set_phase_timer(PhaseTimer* t) {
    timer_ = t;
    dispatcher_->set_phase_timer(t);
  }

 private:
  MoeOps<T>& ops_;
  i64 Tn_, H_, E_, K_, I_;
  MoeConfig cfg_;
  bool lora_dropout_ = false;  // LoRA experts with peft.dropout > 0: the rows' pair keys key its mask
  TopkNorm norm_;
  MoeScratch<T>& s_;
  RoutingPlan plan_;
  std::unique_ptr<TokenDispatcher<T>> dispatcher_;
  std::unique_ptr<Experts<T>> experts_;
  RouterStats stats_;
  std::vector<i64> host_stats_;  // [PlanStatsLayout::words] the one host copy per forward
  const T* x_ = nullptr;   // layer input [T,H] (not owned)
  const T* xe_ = nullptr;  // rows at the experts [R,H] (the dispatcher's)
  T* xr_ = nullptr;        // [T,H] jittered router input (jitter > 0)
  A* noise_ = nullptr;     // [T,H] jitter multipliers (jitter > 0)
  A* logits_ = nullptr;    // [T,E]
  A* probs_ = nullptr;     // [T,E]
  A* topk_w_ = nullptr;    // [T,K]
  ExpertDropout drop_{};   // keys non-null while a dropout is active (Train, expert_dropout or LoRA dropout > 0);
                           // p = moe.expert_dropout (0 with LoRA dropout alone)
  bool jitter_active_ = false;
  PhaseTimer* timer_ = nullptr;
};

}  // namespace moe
