// Owns one MoE block: route → plan → dispatch → experts → combine, with jitter, capacity and expert dropout [C4.router..C4.capacity].
#pragma once
#include <vector>

#include "config/config.h"
#include "core/arena.h"
#include "core/rng.h"
#include "comm/communicator.h"
#include "moe/ep_exchange.h"
#include "moe/experts.h"
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

// Which experts this rank computes and with whom it exchanges tokens (expert parallelism).
struct ExpertShardSpec {
  Communicator* ep_comm = nullptr;  // null or size 1: all experts local (null with ep > 1: plan only)
  int ep = 1;                       // EP group size (sizes the receive buffers)
  int first = 0;                    // first local expert
  int count = -1;                   // local experts (−1 = all)
};

// Scratch shared by every MoE layer's backward (sized for the largest layer).
template <typename T>
struct MoeScratch {
  T* dy;       // [T·K, H] combine backward, local rows
  T* dye;      // [R, H] expert-major
  T* dh;       // [R, I]
  T* da;       // [R, I]
  T* db;       // [R, I]
  T* dxe;      // [R, H] expert-major input grads
  T* dxg;      // [T·K, H] back in local row order
  T* dtopk_w;  // [T, K]
  T* dlogits;  // [T, E]
  T* dxr;      // [T, H]
  static void reserve(MoeScratch& s, Arena& a, i64 Tn, i64 H, i64 E, i64 K, i64 I, i64 R);
};

// Router statistics of one forward, reduced by the model into aux/z values and metrics.
struct RouterStats {
  std::vector<i64> routed;        // [E] top-k assignments before dropping
  std::vector<double> prob_sum;   // [E] Σ_t probs[t, e]
  double lse_sq_sum = 0;          // Σ_t logsumexp(logits_t)²
  i64 dropped = 0, pairs = 0;
};

template <typename T>
class MoeLayer {
 public:
  MoeLayer(i64 Tn, i64 H, i64 E, i64 K, i64 I, const MoeConfig& cfg, TopkNorm norm, const ExpertShardSpec& shard,
           Arena& arena);

  // out [T,H] = MoE(x [T,H]); x must stay valid until backward. bias [E] (selection only) may be null.
  // w holds the local experts. Collective over the EP group.
  void forward(T* out, const T* x, const T* Wg, const ExpertWeights<T>& w, const float* bias, const RngCtx& rng,
               Mode mode);

  // dx [T,H] overwritten. aux_dp [E] = dLoss/dprobs[t,e] (same for every t); z_scale = dLoss/d(mean_t lse²).
  void backward(T* dx, const T* dout, const T* Wg, const ExpertWeights<T>& w, T* dWg, ExpertGrads<T>& g,
                const double* aux_dp, double z_scale, MoeScratch<T>& s);

  const RoutingPlan& plan() const { return plan_; }
  const RouterStats& stats() const { return stats_; }
  // Rows the experts of this rank may receive: T·K per EP rank (dropless worst case).
  static i64 max_expert_rows(i64 Tn, i64 K, const ExpertShardSpec& shard);

 private:
  i64 Tn_, H_, E_, K_, I_;
  MoeConfig cfg_;
  TopkNorm norm_;
  RoutingPlan plan_;
  EpExchange<T> exchange_;
  RouterStats stats_;
  const T* x_ = nullptr;   // layer input [T,H] (not owned)
  T* xr_ = nullptr;        // [T,H] jittered router input (jitter > 0)
  T* noise_ = nullptr;     // [T,H] jitter multipliers (jitter > 0)
  T* logits_ = nullptr;    // [T,E]
  T* probs_ = nullptr;     // [T,E]
  T* topk_w_ = nullptr;    // [T,K]
  T* xg_ = nullptr;        // [T·K, H] dispatched rows, local order
  T* xe_ = nullptr;        // [R, H] rows at the experts: source-major, grouped by local expert within
  ExpertMlpActs<T> mlp_{}; // [R, I] each
  T* ye_ = nullptr;        // [R, H] expert outputs, same layout as xe_
  T* y_ = nullptr;         // [T·K, H] expert outputs back in local order
  T* mask_local_ = nullptr;  // [T·K, I] dropout scale per local row (expert_dropout > 0)
  T* mask_ = nullptr;        // [R, I] the same, at the experts
  bool jitter_active_ = false;
};

}  // namespace moe
