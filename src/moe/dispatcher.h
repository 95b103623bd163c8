// Owns the token-dispatcher and experts interfaces (router → dispatcher → experts) and today's implementations: all-to-all dispatch and grouped SwiGLU MLP experts.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/moe_ops.h"
#include "comm/communicator.h"
#include "config/config.h"
#include "core/arena.h"
#include "moe/ep_exchange.h"
#include "moe/experts.h"
#include "moe/phase_timer.h"
#include "moe/plan.h"

namespace moe {

// Which experts this rank computes and with whom it exchanges tokens (expert parallelism).
struct ExpertShardSpec {
  Communicator* ep_comm = nullptr;  // null or size 1: all experts local (null with ep > 1: plan only)
  int ep = 1;                       // EP group size (sizes the receive buffers)
  int first = 0;                    // first local expert
  int count = -1;                   // local experts (−1 = all)
  Communicator* ep_counts = nullptr;  // the EP group over host memory (row counts); null: ep_comm (host memory)
};

// Rows the experts of one rank may receive per micro-batch and layer [C4.capacity]:
//   capacity_factor > 0: min(ep·T·K, E·C), C = expert_capacity(cf, T, K, E) (each source keeps ≤ C rows per expert);
//   dropless: min(ep·T·K, ceil(f·T·K)) with f = moe.dropless_buffer_factor (0 = ep: the exact worst case).
i64 max_expert_rows(i64 Tn, i64 K, i64 E, const MoeConfig& cfg, const ExpertShardSpec& shard);

// The config key that sets max_expert_rows when a rank can exceed it (dropless); "" when nothing can (capacity).
std::string expert_rows_bound_key(const MoeConfig& cfg);

// Scratch shared by every MoE layer of a model (sized for the largest layer; staging rows at ep > 1 and the
// backward buffers). At ep = 1 the expert side reads the permuted rows in place: no staging, half the buffers.
template <typename T>
struct MoeScratch {
  T* xg = nullptr;        // [T·K, H] permuted rows before the exchange (ep > 1)
  T* ye = nullptr;        // [R, H] expert outputs before the exchange back (ep > 1)
  i64* keys_send = nullptr;  // [T·K] pair keys before the exchange (ep > 1, expert dropout)
  T* dy = nullptr;        // [T·K, H] combine backward, local rows
  T* dye = nullptr;       // [R, H] at the experts (ep > 1; = dy at ep = 1)
  T* dh = nullptr;        // [R, I]
  T* da = nullptr;        // [R, I]
  T* db = nullptr;        // [R, I]
  T* dxe = nullptr;       // [R, H] expert input grads
  T* dxg = nullptr;       // [T·K, H] back in local row order (ep > 1; = dxe at ep = 1)
  acc_t<T>* dtopk_w = nullptr;  // [T, K]
  acc_t<T>* dlogits = nullptr;  // [T, E]
  T* dxr = nullptr;       // [T, H]
  // row_keys: the rows' pair keys travel with them although cfg has no expert dropout (LoRA dropout).
  static void reserve(MoeScratch& s, Arena& a, i64 Tn, i64 H, i64 E, i64 K, i64 I, const MoeConfig& cfg,
                      const ExpertShardSpec& shard, bool row_keys = false);
};

enum class DispatchLayout { Alias, Exchange };  // ep = 1: rows read in place; ep > 1: all-to-all

// Moves token rows to the ranks of their experts and expert outputs back (Megatron-Core's token dispatcher role).
// dispatch() and combine() run once per forward; their backward reuse the layout of the last plan() (the handle).
template <typename T>
class TokenDispatcher {
 public:
  using A = acc_t<T>;
  virtual ~TokenDispatcher() = default;
  // From this rank's kept rows per global expert [E] (host): lays out the exchange. Collective over the EP group;
  // BadInput on every rank when any rank would receive more rows than its buffers hold.
  virtual void plan(const i64* host_counts) = 0;
  virtual i64 recv_rows() const = 0;
  // (local expert, rows) blocks of the expert buffers, expert-major, source-minor.
  virtual const std::vector<RowBlock>& row_blocks() const = 0;
  // Rows of x [T,H] at the experts [R,H] (kept until backward).
  virtual const T* dispatch(const T* x, const RoutingPlan& plan) = 0;
  // Pair keys of those rows [R] (kept until backward): (source Philox stream << 32) | pair.
  virtual const i64* dispatch_keys(const RoutingPlan& plan, uint32_t stream) = 0;
  // Where the experts write their outputs [R,H]; combine() then forms out [T,H] = Σ_k w · y.
  virtual T* expert_out() = 0;
  virtual void combine(T* out, const A* topk_w, const RoutingPlan& plan) = 0;
  // Backward of combine: dtopk_w [T,K]; returns dLoss/d(expert outputs) [R,H] at the experts.
  virtual const T* combine_backward(A* dtopk_w, const T* dout, const A* topk_w, const RoutingPlan& plan) = 0;
  // Where the experts write their input gradients [R,H]; dispatch_backward then forms dx [T,H] (overwritten).
  virtual T* expert_dx() = 0;
  virtual void dispatch_backward(T* dx, const RoutingPlan& plan) = 0;
  // Times permute / all-to-all / unpermute phases (forward and backward) on `t` (null: untimed).
  void set_phase_timer(PhaseTimer* t) { timer_ = t; }
  // Rows this rank sent to / received from OTHER ranks in the last dispatch (0 at ep = 1; combine moves them back).
  virtual i64 remote_send_rows() const = 0;
  virtual i64 remote_recv_rows() const = 0;

 protected:
  PhaseTimer* timer_ = nullptr;
};

// All-to-all-v dispatch over the EP group (identity at ep = 1, where it aliases instead of copying).
template <typename T>
class AllToAllDispatcher final : public TokenDispatcher<T> {
 public:
  using A = acc_t<T>;
  using TokenDispatcher<T>::timer_;
  // row_keys: dispatch_keys is called without expert dropout (LoRA dropout keys the expert rows too).
  AllToAllDispatcher(MoeOps<T>& ops, i64 Tn, i64 H, i64 E, i64 K, const MoeConfig& cfg, const ExpertShardSpec& shard,
                     MoeScratch<T>& scratch, Arena& arena, bool row_keys = false);
  void plan(const i64* host_counts) override { exchange_.plan(host_counts); }
  i64 recv_rows() const override { return exchange_.recv_rows(); }
  const std::vector<RowBlock>& row_blocks() const override { return exchange_.row_blocks(); }
  const T* dispatch(const T* x, const RoutingPlan& plan) override;
  const i64* dispatch_keys(const RoutingPlan& plan, uint32_t stream) override;
  T* expert_out() override { return layout_ == DispatchLayout::Alias ? y_ : s_.ye; }
  void combine(T* out, const A* topk_w, const RoutingPlan& plan) override;
  const T* combine_backward(A* dtopk_w, const T* dout, const A* topk_w, const RoutingPlan& plan) override;
  T* expert_dx() override { return s_.dxe; }
  void dispatch_backward(T* dx, const RoutingPlan& plan) override;
  i64 remote_send_rows() const override { return exchange_.remote_send_rows(); }
  i64 remote_recv_rows() const override { return exchange_.remote_recv_rows(); }
  DispatchLayout layout() const { return layout_; }

 private:
  MoeOps<T>& ops_;
  MoeScratch<T>& s_;
  i64 H_;
  DispatchLayout layout_;
  EpExchange<T> exchange_;
  T* xe_ = nullptr;     // [R,H] rows at the experts (Alias: the permuted rows themselves)
  T* y_ = nullptr;      // Exchange: [T·K,H] expert outputs back in local order; Alias: [R,H] the outputs in place
  i64* keys_ = nullptr; // [R] pair keys at the experts (expert dropout)
};

// Computes the local experts over row blocks (Megatron-Core's experts role).
template <typename T>
class Experts {
 public:
  virtual ~Experts() = default;
  // y [R,H] for the rows of `blocks`; activations saved for backward.
  virtual void forward(T* y, const T* x, const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                       const ExpertWeights<T>& w) = 0;
  // dx [R,H] overwritten for the rows of `blocks`; weight gradients accumulated.
  virtual void backward(T* dx, ExpertGrads<T>& g, const T* dy, const T* x, const std::vector<RowBlock>& blocks,
                        const ExpertDropout& drop, const ExpertWeights<T>& w, MoeScratch<T>& s) = 0;
};

// SwiGLU MLP experts, all local experts in one grouped call of the op table.
template <typename T>
class GroupedMlpExperts final : public Experts<T> {
 public:
  GroupedMlpExperts(MoeOps<T>& ops, i64 H, i64 I, i64 R, Arena& arena);
  void forward(T* y, const T* x, const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
               const ExpertWeights<T>& w) override;
  void backward(T* dx, ExpertGrads<T>& g, const T* dy, const T* x, const std::vector<RowBlock>& blocks,
                const ExpertDropout& drop, const ExpertWeights<T>& w, MoeScratch<T>& s) override;

 private:
  MoeOps<T>& ops_;
  i64 H_, I_;
  ExpertMlpActs<T> acts_{};  // [R, I] each
};

}  // namespace moe
