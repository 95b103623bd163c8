// Owns the EP exchange: one counts all-to-all per layer forward, row all-to-all-v both ways, stable block permutation.
#include "moe/ep_exchange.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

template <typename T>
static CommDtype comm_dtype() {
  return sizeof(T) == 4 ? CommDtype::F32 : CommDtype::F64;
}

template <typename T>
EpExchange<T>::EpExchange(Communicator* comm, i64 E, i64 E_local, i64 max_rows, i64 max_width)
    : comm_(comm), ep_(comm ? comm->size() : 1), E_(E), E_local_(E_local), max_rows_(max_rows), max_width_(max_width) {
  MT_CHECK(E % E_local == 0 && (!comm || E_local * ep_ == E), "experts ", E, " not split evenly over ep ", ep_);
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
  cnt_send_.assign(ep_, E_local);
  cnt_sd_.assign(ep_, 0);
  cnt_rc_.assign(ep_, E_local);
  cnt_rd_.assign(ep_, 0);
  for (int q = 0; q < ep_; ++q) cnt_sd_[q] = cnt_rd_[q] = q * E_local;
}

template <typename T>
void EpExchange<T>::plan(const std::vector<i64>& counts) {
  if (ep_ == 1) {
    local_ = counts;
    blocks_.resize(size_t(E_local_));
    recv_rows_ = 0;
    for (i64 j = 0; j < E_local_; ++j) {
      blocks_[j] = {j, recv_rows_, counts[j]};
      recv_rows_ += counts[j];
    }
    return;
  }
  // Counts for the experts of peer q are the contiguous slice [q·E_local, (q+1)·E_local).
  comm_->all_to_all_v(counts.data(), cnt_send_.data(), cnt_sd_.data(), recv_counts_.data(), cnt_rc_.data(),
                      cnt_rd_.data(), CommDtype::I64);
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
  MT_CHECK(recv_rows_ <= max_rows_, "EP receive rows ", recv_rows_, " exceed the planned ", max_rows_);
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
  element_layout(W, true);
  comm_->all_to_all_v(send, sc_.data(), sd_.data(), recv, rc_.data(), rd_.data(), comm_dtype<T>());
}

template <typename T>
void EpExchange<T>::from_experts(T* back, const T* at_experts, i64 W) {
  if (ep_ == 1) {
    std::copy(at_experts, at_experts + recv_rows_ * W, back);
    return;
  }
  MT_CHECK(W <= max_width_, "exchange width ", W, " > planned ", max_width_);
  element_layout(W, false);
  comm_->all_to_all_v(at_experts, sc_.data(), sd_.data(), back, rc_.data(), rd_.data(), comm_dtype<T>());
}

template class EpExchange<float>;
template class EpExchange<double>;

}  // namespace moe
