// Owns the expert-parallel token exchange: per-expert counts, all-to-all-v of rows, and the src-major ↔ expert-major permutation (the "handle" reused by backward).
#pragma once
#include <vector>

#include "comm/communicator.h"
#include "core/dims.h"

namespace moe {

// Experts are split evenly and contiguously over the EP group: rank q owns [q·E_local, (q+1)·E_local).
template <typename T>
class EpExchange {
 public:
  // comm == nullptr or size 1: identity (rows stay local, no copies beyond the permutation).
  // max_rows · max_width bounds any exchanged buffer (staging allocated here, once).
  EpExchange(Communicator* comm, i64 E, i64 E_local, i64 max_rows, i64 max_width);

  // From this rank's kept rows per global expert [E] (rows already grouped by expert): exchanges counts with
  // every peer and builds the send/recv layout. Collective over the EP group.
  void plan(const std::vector<i64>& counts);

  i64 recv_rows() const { return recv_rows_; }                   // R: rows this rank's experts process
  const std::vector<i64>& local_counts() const { return local_; }  // [E_local] rows per local expert
  // [E_local · ep] rows per (local expert j, source rank s), expert-major: the blocks of the expert-major buffer.
  const std::vector<i64>& block_counts() const { return blocks_; }

  // Forward dispatch: send [P,W] (grouped by global expert) → recv [R,W] grouped by local expert, source rank
  // order within. Backward of combine uses the same call on gradients.
  void to_experts(T* recv, const T* send, i64 W);
  // Reverse: expert-major [R,W] → back [P,W] in the sender's original row order.
  void from_experts(T* back, const T* expert_major, i64 W);

  bool is_local() const { return ep_ == 1; }

 private:
  Communicator* comm_;
  int ep_ = 1;
  i64 E_, E_local_;
  std::vector<i64> recv_counts_;            // [ep · E_local] rows from src for local expert j
  std::vector<i64> send_rows_, send_off_;   // [ep] per destination (rows)
  std::vector<i64> recv_rows_by_src_, recv_off_;  // [ep]
  std::vector<i64> local_;                  // [E_local]
  std::vector<i64> blocks_;                 // [E_local · ep] expert-major
  std::vector<i64> sc_, sd_, rc_, rd_;      // element counts/displacements for one call
  std::vector<i64> cnt_send_, cnt_sd_, cnt_rc_, cnt_rd_;
  std::vector<T> staging_;                  // [max_rows · W] src-major staging, sized once
  i64 recv_rows_ = 0, max_rows_, max_width_;
  void element_layout(i64 W, bool forward);
};

}  // namespace moe
