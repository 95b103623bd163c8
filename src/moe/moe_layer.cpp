// Owns the MoE block orchestration (route → plan → dispatch → experts → combine) and its random draws.
#include "moe/moe_layer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace moe {

template <typename T>
MoeLayer<T>::MoeLayer(MoeOps<T>& ops, i64 Tn, i64 H, i64 E, i64 K, i64 I, const MoeConfig& cfg, TopkNorm norm,
                      const ExpertShardSpec& shard, MoeScratch<T>& scratch, Arena& a, DenseOps<T>* dense,
                      const ExpertLoraShape* lora)
    : ops_(ops), Tn_(Tn), H_(H), E_(E), K_(K), I_(I), cfg_(cfg), norm_(norm), s_(scratch), plan_(Tn, E, K, a) {
  const i64 R = max_expert_rows(Tn, K, E, cfg, shard);
  if (!a.plan_only()) ops.reserve_workspace(Tn, H, I, R);
  lora_dropout_ = lora && lora->dropout > 0;
  dispatcher_ = std::make_unique<AllToAllDispatcher<T>>(ops, Tn, H, E, K, cfg, shard, scratch, a, lora_dropout_);
  if (lora) {
    MT_CHECK(dense != nullptr, "LoRA experts need the dense op table");
    experts_ = std::make_unique<LoraMlpExperts<T>>(*dense, H, I, R, *lora, a);
  } else {
    experts_ = std::make_unique<GroupedMlpExperts<T>>(ops, H, I, R, a);
  }
  stats_.routed.assign(E, 0);
  stats_.prob_sum.assign(E, 0.0);
  host_stats_.assign(size_t(plan_.layout().words()), 0);
  if (cfg.router_jitter > 0) {
    a.reserve(&xr_, Tn * H);
    a.reserve(&noise_, Tn * H);
  }
  a.reserve(&logits_, Tn * E);
  a.reserve(&probs_, Tn * E);
  a.reserve(&topk_w_, Tn * K);
}

// contract: C4.router C4.capacity C4.expert C4.combine
template <typename T>
void MoeLayer<T>::forward(T* out, const T* x, const A* Wg, const ExpertWeights<T>& w, const float* bias,
                          const RngCtx& rng, Mode mode) {
  x_ = x;
  const RouterDims d{Tn_, H_, E_, K_};
  const uint32_t stream = rng_stream(rng.layer, rng.global_micro);
  // 1. Route. Jitter multiplies the router input only (Megatron's input jitter), U(1−ε, 1+ε).
  jitter_active_ = mode == Mode::Train && cfg_.router_jitter > 0;
  {
    PhaseScope ph(timer_, MoePhase::Route);
    const T* xr = x;
    if (jitter_active_) {
      ops_.router_jitter(xr_, noise_, x, Tn_ * H_, cfg_.router_jitter, rng.seed, rng.step, stream);
      xr = xr_;
    }
    ops_.router_forward(logits_, probs_, plan_.topk_idx.data(), topk_w_, xr, Wg, bias, d, cfg_.router_temperature,
                        norm_);
  }
  // 2. Plan: capacity per rank and micro-batch, stable counting sort by expert; router statistics beside it;
  //    then the layer's one device→host copy (counts for the exchange, statistics for the losses), and the
  //    exchange layout from every rank's counts.
  const PlanStatsLayout L = plan_.layout();
  {
    PhaseScope ph(timer_, MoePhase::Plan);
    ops_.build_plan(plan_, probs_, cfg_.capacity_factor, cfg_.drop_policy);
    ops_.router_stats(plan_, probs_, logits_);
    ops_.copy_expert_counts_to_host(host_stats_.data(), plan_);
    dispatcher_->plan(host_stats_.data() + L.counts());
  }
  // 3. Dispatch: rows to the ranks owning their experts (in place at ep = 1); pair keys ride along for dropout.
  xe_ = dispatcher_->dispatch(x, plan_);
  drop_ = {};
  if (mode == Mode::Train && (cfg_.expert_dropout > 0 || lora_dropout_)) {  // rows keyed for either dropout
    drop_.keys = dispatcher_->dispatch_keys(plan_, stream);
    drop_.p = cfg_.expert_dropout;
    drop_.seed = rng.seed;
    drop_.step = rng.step;
  }
  // 4. Experts: one grouped computation over the rows of the local experts.
  {
    PhaseScope ph(timer_, MoePhase::Experts);
    experts_->forward(dispatcher_->expert_out(), xe_, dispatcher_->row_blocks(), drop_, w);
  }
  // 5. Combine: rows back to their ranks, weighted sum per token.
  dispatcher_->combine(out, topk_w_, plan_);

  // Statistics for aux/z losses and router health, from the host copy.
  const i64* hs = host_stats_.data();
  std::copy(hs + L.routed(), hs + L.routed() + E_, stats_.routed.begin());
  std::memcpy(stats_.prob_sum.data(), hs + L.prob_sum(), size_t(E_) * sizeof(double));
  std::memcpy(&stats_.lse_sq_sum, hs + L.lse_sq(), sizeof(double));
  std::memcpy(&stats_.logit_sq_sum, hs + L.logit_sq(), sizeof(double));
  stats_.dropped = hs[L.dropped()];
  stats_.pairs = Tn_ * K_;
}

// Backward mirrors forward with the saved plan and exchange layout: combineᵀ → to experts → MLPᵀ → back → dispatchᵀ.
template <typename T>
void MoeLayer<T>::backward(T* dx, const T* dout, const A* Wg, const ExpertWeights<T>& w, A* dWg, ExpertGrads<T>& g,
                           const double* aux_dp, double z_scale) {
  const RouterDims d{Tn_, H_, E_, K_};
  const T* xr = jitter_active_ ? xr_ : x_;
  const T* dye = dispatcher_->combine_backward(s_.dtopk_w, dout, topk_w_, plan_);
  {
    PhaseScope ph(timer_, MoePhase::ExpertsBwd);
    experts_->backward(dispatcher_->expert_dx(), g, dye, xe_, dispatcher_->row_blocks(), drop_, w, s_);
  }
  dispatcher_->dispatch_backward(dx, plan_);
  // Router: experts' backward gave dtopk_w; add the aux and z terms.
  PhaseScope ph(timer_, MoePhase::RouteBwd);
  ops_.router_backward(s_.dxr, dWg, s_.dlogits, s_.dtopk_w, logits_, probs_, plan_.topk_idx.data(), topk_w_, xr, Wg,
                       aux_dp, z_scale, d, cfg_.router_temperature, norm_);
  ops_.add_router_grad(dx, s_.dxr, jitter_active_ ? noise_ : nullptr, Tn_ * H_);
}

template class MoeLayer<float>;
template class MoeLayer<double>;
template class MoeLayer<bf16>;

}  // namespace moe
