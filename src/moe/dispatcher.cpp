// Owns the buffer sizing of MoE dispatch (capacity / dropless bound), the all-to-all dispatcher (aliasing at ep = 1) and the grouped MLP experts.
#include "moe/dispatcher.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moe {

// contract: C4.capacity
i64 max_expert_rows(i64 Tn, i64 K, i64 E, const MoeConfig& cfg, const ExpertShardSpec& shard) {
  const i64 worst = i64(shard.ep) * Tn * K;
  const i64 C = expert_capacity(cfg.capacity_factor, Tn, K, E);
  if (C >= 0) return std::min(worst, E * C);
  if (cfg.dropless_buffer_factor <= 0) return worst;
  // In double first: a factor ≥ ep (even 1e300) means the worst case, never an overflowed integer.
  const double rows = std::ceil(cfg.dropless_buffer_factor * double(Tn * K));
  return rows >= double(worst) ? worst : i64(rows);
}

std::string expert_rows_bound_key(const MoeConfig& cfg) {
  return cfg.capacity_factor > 0 ? "" : "moe.dropless_buffer_factor";
}

template <typename T>
void MoeScratch<T>::reserve(MoeScratch& s, Arena& a, i64 Tn, i64 H, i64 E, i64 K, i64 I, const MoeConfig& cfg,
                            const ExpertShardSpec& shard, bool row_keys) {
  const i64 TK = Tn * K, R = max_expert_rows(Tn, K, E, cfg, shard);
  if (shard.ep > 1) {
    a.reserve(&s.xg, TK * H);
    a.reserve(&s.ye, R * H);
    if (cfg.expert_dropout > 0 || row_keys) a.reserve(&s.keys_send, TK);
    a.reserve(&s.dye, R * H);
    a.reserve(&s.dxg, TK * H);
  }
  a.reserve(&s.dy, (shard.ep > 1 ? TK : R) * H);
  a.reserve(&s.dh, R * I);
  a.reserve(&s.da, R * I);
  a.reserve(&s.db, R * I);
  a.reserve(&s.dxe, R * H);
  a.reserve(&s.dtopk_w, TK);
  a.reserve(&s.dlogits, Tn * E);
  a.reserve(&s.dxr, Tn * H);
}

template <typename T>
AllToAllDispatcher<T>::AllToAllDispatcher(MoeOps<T>& ops, i64 Tn, i64 H, i64 E, i64 K, const MoeConfig& cfg,
                                          const ExpertShardSpec& shard, MoeScratch<T>& scratch, Arena& a,
                                          bool row_keys)
    : ops_(ops), s_(scratch), H_(H), layout_(shard.ep > 1 ? DispatchLayout::Exchange : DispatchLayout::Alias),
      exchange_(shard.ep_comm, E, shard.count < 0 ? E : shard.count, max_expert_rows(Tn, K, E, cfg, shard), H,
                expert_rows_bound_key(cfg), shard.ep_counts) {
  const i64 TK = Tn * K, R = max_expert_rows(Tn, K, E, cfg, shard);
  a.reserve(&xe_, R * H);
  a.reserve(&y_, (layout_ == DispatchLayout::Alias ? R : TK) * H);
  if (cfg.expert_dropout > 0 || row_keys) a.reserve(&keys_, R);
}

// At ep = 1 the permuted rows ARE the expert input: permute writes straight into the saved buffer.
template <typename T>
const T* AllToAllDispatcher<T>::dispatch(const T* x, const RoutingPlan& plan) {
  if (layout_ == DispatchLayout::Alias) {
    PhaseScope ph(timer_, MoePhase::Permute);
    ops_.permute(xe_, x, plan, H_);
    return xe_;
  }
  {
    PhaseScope ph(timer_, MoePhase::Permute);
    ops_.permute(s_.xg, x, plan, H_);
  }
  PhaseScope ph(timer_, MoePhase::DispatchA2A);
  exchange_.to_experts(xe_, s_.xg, H_);
  return xe_;
}

template <typename T>
const i64* AllToAllDispatcher<T>::dispatch_keys(const RoutingPlan& plan, uint32_t stream) {
  if (layout_ == DispatchLayout::Alias) {
    ops_.pair_keys(keys_, plan, stream);
    return keys_;
  }
  ops_.pair_keys(s_.keys_send, plan, stream);
  exchange_.ids_to_experts(keys_, s_.keys_send);
  return keys_;
}

template <typename T>
void AllToAllDispatcher<T>::combine(T* out, const A* topk_w, const RoutingPlan& plan) {
  if (layout_ == DispatchLayout::Exchange) {
    PhaseScope ph(timer_, MoePhase::CombineA2A);
    exchange_.from_experts(y_, s_.ye, H_);
  }
  PhaseScope ph(timer_, MoePhase::Unpermute);
  ops_.combine_forward(out, y_, topk_w, plan, H_);
}

template <typename T>
const T* AllToAllDispatcher<T>::combine_backward(A* dtopk_w, const T* dout, const A* topk_w, const RoutingPlan& plan) {
  {
    PhaseScope ph(timer_, MoePhase::UnpermuteBwd);
    ops_.combine_backward(s_.dy, dtopk_w, dout, y_, topk_w, plan, H_);
  }
  if (layout_ == DispatchLayout::Alias) return s_.dy;
  PhaseScope ph(timer_, MoePhase::CombineA2ABwd);
  exchange_.to_experts(s_.dye, s_.dy, H_);
  return s_.dye;
}

template <typename T>
void AllToAllDispatcher<T>::dispatch_backward(T* dx, const RoutingPlan& plan) {
  const T* dxg = s_.dxe;
  if (layout_ == DispatchLayout::Exchange) {
    PhaseScope ph(timer_, MoePhase::DispatchA2ABwd);
    exchange_.from_experts(s_.dxg, s_.dxe, H_);
    dxg = s_.dxg;
  }
  PhaseScope ph(timer_, MoePhase::PermuteBwd);
  ops_.unpermute(dx, dxg, plan, H_);
}

template <typename T>
GroupedMlpExperts<T>::GroupedMlpExperts(MoeOps<T>& ops, i64 H, i64 I, i64 R, Arena& a) : ops_(ops), H_(H), I_(I) {
  a.reserve(&acts_.a, R * I);
  a.reserve(&acts_.b, R * I);
  a.reserve(&acts_.hact, R * I);
}

template <typename T>
void GroupedMlpExperts<T>::forward(T* y, const T* x, const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                                   const ExpertWeights<T>& w) {
  ops_.grouped_mlp_forward(y, acts_, x, blocks, drop, w, H_, I_);
}

template <typename T>
void GroupedMlpExperts<T>::backward(T* dx, ExpertGrads<T>& g, const T* dy, const T* x,
                                    const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                                    const ExpertWeights<T>& w, MoeScratch<T>& s) {
  ops_.grouped_mlp_backward(dx, g, s.dh, s.da, s.db, dy, acts_, x, blocks, drop, w, H_, I_);
}

template struct MoeScratch<float>;
template struct MoeScratch<double>;
template class AllToAllDispatcher<float>;
template class AllToAllDispatcher<double>;
template class GroupedMlpExperts<float>;
template class GroupedMlpExperts<double>;
template struct MoeScratch<bf16>;
template class AllToAllDispatcher<bf16>;
template class GroupedMlpExperts<bf16>;

}  // namespace moe
