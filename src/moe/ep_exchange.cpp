// Owns the EP exchange: one counts all-to-all per layer forward, row all-to-all-v both ways, stable block permutation.
#include "moe/ep_exchange.h"

#include <algorithm>
#include <type_traits>

#include "core/error.h"

namespace moe {

// Rows move bit for bit: bf16 rows travel as bytes (2 per element).
template <typename T>
static CommDtype comm_dtype() {
  return std::is_same<T, bf16>::value ? CommDtype::U8 : sizeof(T) == 4 ? CommDtype::F32 : CommDtype::F64;
}
template <typename T>
static constexpr i64 comm_elems() {
  return std::is_same<T, bf16>::value ? i64(sizeof(T)) : 1;
}

template <typename T>
EpExchange<T>::EpExchange(Communicator* comm, i64 E, i64 E_local, i64 max_rows, i64 max_width, std::string bound_key,
                          Communicator* counts_comm)
    : comm_(comm), counts_comm_(counts_comm ? counts_comm : comm), ep_(comm ? comm->size() : 1), E_(E),
      E_local_(E_local), max_rows_(max_rows), max_width_(max_width), bound_key_(std::move(bound_key)) {
  MT_CHECK(E % E_local == 0 && (!comm || E_local * ep_ == E), "experts ", E, " not split evenly over ep ", ep_);
  MT_CHECK(!comm || (counts_comm_->size() == ep_ && counts_comm_->rank() == comm->rank() &&
                     counts_comm_->buffer_space() == MemSpace::Host),
           "the EP counts communicator must be the EP group over host memory");
  recv_counts_.assign(size_t(ep_ * E_local), 0);
  send_rows_.assign(ep_, 0);
  send_off_.assign(ep_, 0);
  recv_rows_by_src_.assign(ep_, 0);
  recv_off_.assign(ep_, 0);
  local_.assign(size_t(E_local), 0);
  sc_.assign(ep_, 0);
  sd_.assign(ep_, 0);
  rc_.assign(ep_, 0);
  rd_.assign(ep_, 0);
  all_counts_.assign(size_t(ep_ * E), 0);
}

template <typename T>
void EpExchange<T>::check_bound(i64 rank, i64 rows) const {
  if (rows <= max_rows_) return;
  MT_CHECK(!bound_key_.empty(), "EP receive rows ", rows, " exceed the planned ", max_rows_);
  MT_INPUT_FAIL(bound_key_, ": EP rank ", rank, " needs ", rows, " receive rows for its experts but its receive buffers hold ",
                max_rows_, " rows; raise ", bound_key_, " (a factor equal to the EP size, ", ep_, ", always suffices)");
}

template <typename T>
void EpExchange<T>::plan(const i64* counts) {
  if (ep_ == 1) {
    local_.assign(counts, counts + E_local_);
    blocks_.resize(size_t(E_local_));
    recv_rows_ = 0;
    for (i64 j = 0; j < E_local_; ++j) {
      blocks_[j] = {j, recv_rows_, counts[j]};
      recv_rows_ += counts[j];
    }
    check_bound(0, recv_rows_);
    return;
  }
  // Every rank learns every rank's counts: the receive rows of each rank are then known everywhere, so a bound
  // exceeded anywhere stops all ranks here together.
  counts_comm_->all_gather(all_counts_.data(), counts, E_, CommDtype::I64);
  const int me = comm_->rank();
  for (int s = 0; s < ep_; ++s)
    for (i64 j = 0; j < E_local_; ++j) recv_counts_[s * E_local_ + j] = all_counts_[s * E_ + me * E_local_ + j];
  for (int q = 0; q < ep_; ++q) {
    i64 rows = 0;
    for (int s = 0; s < ep_; ++s)
      for (i64 j = 0; j < E_local_; ++j) rows += all_counts_[s * E_ + q * E_local_ + j];
    check_bound(q, rows);
  }
  i64 off = 0;
  for (int q = 0; q < ep_; ++q) {
    send_off_[q] = off;
    send_rows_[q] = 0;
    for (i64 j = 0; j < E_local_; ++j) send_rows_[q] += counts[q * E_local_ + j];
    off += send_rows_[q];
  }
  off = 0;
  std::fill(local_.begin(), local_.end(), 0);
  for (int s = 0; s < ep_; ++s) {
    recv_off_[s] = off;
    recv_rows_by_src_[s] = 0;
    for (i64 j = 0; j < E_local_; ++j) {
      recv_rows_by_src_[s] += recv_counts_[s * E_local_ + j];
      local_[j] += recv_counts_[s * E_local_ + j];
    }
    off += recv_rows_by_src_[s];
  }
  recv_rows_ = off;
  blocks_.resize(size_t(E_local_ * ep_));
  for (int s = 0; s < ep_; ++s) {
    i64 row = recv_off_[s];
    for (i64 j = 0; j < E_local_; ++j) {
      blocks_[j * ep_ + s] = {j, row, recv_counts_[s * E_local_ + j]};
      row += recv_counts_[s * E_local_ + j];
    }
  }
}

// Σ of per-peer rows [ep] over every peer but `self`.
static i64 rows_of_others(const std::vector<i64>& per_peer, int self) {
  i64 rows = 0;
  for (size_t q = 0; q < per_peer.size(); ++q)
    if (int(q) != self) rows += per_peer[q];
  return rows;
}

template <typename T>
i64 EpExchange<T>::remote_send_rows() const {
  return ep_ == 1 ? 0 : rows_of_others(send_rows_, comm_->rank());
}

template <typename T>
i64 EpExchange<T>::remote_recv_rows() const {
  return ep_ == 1 ? 0 : rows_of_others(recv_rows_by_src_, comm_->rank());
}

template <typename T>
void EpExchange<T>::element_layout(i64 W, bool forward) {
  for (int q = 0; q < ep_; ++q) {
    const i64 mine = send_rows_[q] * W, theirs = recv_rows_by_src_[q] * W;
    sc_[q] = forward ? mine : theirs;
    sd_[q] = (forward ? send_off_[q] : recv_off_[q]) * W;
    rc_[q] = forward ? theirs : mine;
    rd_[q] = (forward ? recv_off_[q] : send_off_[q]) * W;
  }
}

template <typename T>
void EpExchange<T>::to_experts(T* recv, const T* send, i64 W) {
  if (ep_ == 1) {
    std::copy(send, send + recv_rows_ * W, recv);
    return;
  }
  MT_CHECK(W <= max_width_, "exchange width ", W, " > planned ", max_width_);
  element_layout(W * comm_elems<T>(), true);
  comm_->all_to_all_v(send, sc_.data(), sd_.data(), recv, rc_.data(), rd_.data(), comm_dtype<T>());
}

template <typename T>
void EpExchange<T>::from_experts(T* back, const T* at_experts, i64 W) {
  if (ep_ == 1) {
    std::copy(at_experts, at_experts + recv_rows_ * W, back);
    return;
  }
  MT_CHECK(W <= max_width_, "exchange width ", W, " > planned ", max_width_);
  element_layout(W * comm_elems<T>(), false);
  comm_->all_to_all_v(at_experts, sc_.data(), sd_.data(), back, rc_.data(), rd_.data(), comm_dtype<T>());
}

template <typename T>
void EpExchange<T>::ids_to_experts(i64* recv, const i64* send) {
  if (ep_ == 1) {
    std::copy(send, send + recv_rows_, recv);
    return;
  }
  element_layout(1, true);
  comm_->all_to_all_v(send, sc_.data(), sd_.data(), recv, rc_.data(), rd_.data(), CommDtype::I64);
}

template class EpExchange<float>;
template class EpExchange<double>;
template class EpExchange<bf16>;

}  // namespace moe
