// Owns the expert-parallel token exchange: per-expert counts, all-to-all-v of rows straight into place, and the row blocks per (expert, source) — the "handle" reused by backward.
#pragma once
#include <string>
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
  // max_rows · max_width bounds any exchanged buffer. `bound_key` names what sets max_rows (the config key a user
  // raises when a rank would receive more rows; empty: an internal bound).
  // comm moves the rows (backend memory: NCCL on a GPU); counts_comm, the same group over host memory, moves the
  // host count matrix of plan() (null: comm itself, when it moves host memory).
  EpExchange(Communicator* comm, i64 E, i64 E_local, i64 max_rows, i64 max_width, std::string bound_key = "",
             Communicator* counts_comm = nullptr);

  // From this rank's kept rows per global expert [E] (rows already grouped by expert): all-gathers the [ep × E]
  // count matrix so every rank knows every rank's receive rows, then builds the send/recv layout. Collective
  // over the EP group. When any rank would receive more than max_rows rows, EVERY rank raises the same BadInput
  // naming bound_key, the rows needed and the rows available (no rank is left waiting in a collective).
  void plan(const i64* counts);
  void plan(const std::vector<i64>& counts) { plan(counts.data()); }

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
  // Pair keys ride along with the rows: send [P] (grouped by global expert) → recv [R], same layout as to_experts.
  void ids_to_experts(i64* recv, const i64* send);

  bool is_local() const { return ep_ == 1; }
  // Rows sent to / received from other ranks by one to_experts call of the last plan (this rank's own rows excluded).
  i64 remote_send_rows() const;
  i64 remote_recv_rows() const;

 private:
  Communicator* comm_;
  Communicator* counts_comm_;  // host-memory twin of comm_ for plan()'s counts
  int ep_ = 1;
  i64 E_, E_local_;
  std::vector<i64> recv_counts_;            // [ep · E_local] rows from src for local expert j
  std::vector<i64> send_rows_, send_off_;   // [ep] per destination (rows)
  std::vector<i64> recv_rows_by_src_, recv_off_;  // [ep]
  std::vector<i64> local_;                  // [E_local]
  std::vector<RowBlock> blocks_;            // [E_local · ep] expert-major
  std::vector<i64> sc_, sd_, rc_, rd_;      // element counts/displacements for one call
  std::vector<i64> all_counts_;             // [ep · E] row s = rank s's counts per global expert
  i64 recv_rows_ = 0, max_rows_, max_width_;
  std::string bound_key_;
  void element_layout(i64 W, bool forward);
  void check_bound(i64 rank, i64 rows) const;
};

}  // namespace moe
