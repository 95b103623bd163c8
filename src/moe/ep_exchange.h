// Owns the expert-parallel token exchange: per-expert counts, all-to-all-v of rows straight into place, and the row blocks per (expert, source) — the "handle" reused by backward.
#pragma once
#include <vector>

#include "comm/communicator.h"
#include "core/dims.h"
#include "moe/experts.h"

namespace moe {

// Experts are split evenly and contiguously over the EP group: rank q owns [q·E_local, (q+1)·E_local).
template <typename T>
class EpExchange {
 public:
  // comm == nullptr or size 1: identity (rows stay local, no copies beyond the permutation).
  // max_rows · max_width bounds any exchanged buffer.
  EpExchange(Communicator* comm, i64 E, i64 E_local, i64 max_rows, i64 max_width);

  // From this rank's kept rows per global expert [E] (rows already grouped by expert): exchanges counts with
  // every peer and builds the send/recv layout. Collective over the EP group.
  void plan(const std::vector<i64>& counts);

  i64 recv_rows() const { return recv_rows_; }                   // R: rows this rank's experts process
  const std::vector<i64>& local_counts() const { return local_; }  // [E_local] rows per local expert
  // Where each (local expert j, source rank s) block sits in the received buffer, listed expert-major,
  // source-minor (the order backward accumulates weight gradients in).
  const std::vector<RowBlock>& row_blocks() const { return blocks_; }

  // Forward dispatch: send [P,W] (grouped by global expert) → recv [R,W], source-major (each source's rows
  // grouped by local expert), received in place — no staging copy. Backward of combine uses it on gradients.
  void to_experts(T* recv, const T* send, i64 W);
  // Reverse: recv-layout rows [R,W] → back [P,W] in the sender's original row order.
  void from_experts(T* back, const T* at_experts, i64 W);

  bool is_local() const { return ep_ == 1; }

 private:
  Communicator* comm_;
  int ep_ = 1;
  i64 E_, E_local_;
  std::vector<i64> recv_counts_;            // [ep · E_local] rows from src for local expert j
  std::vector<i64> send_rows_, send_off_;   // [ep] per destination (rows)
  std::vector<i64> recv_rows_by_src_, recv_off_;  // [ep]
  std::vector<i64> local_;                  // [E_local]
  std::vector<RowBlock> blocks_;            // [E_local · ep] expert-major
  std::vector<i64> sc_, sd_, rc_, rd_;      // element counts/displacements for one call
  std::vector<i64> cnt_send_, cnt_sd_, cnt_rc_, cnt_rd_;
  i64 recv_rows_ = 0, max_rows_, max_width_;
  void element_layout(i64 W, bool forward);
};

}  // namespace moe
