// Owns the test doubles that record when gradient reduce-scatters start and complete: RecordingComm (a
// Communicator wrapper logging reduce-scatter starts, waits and blocking calls, optionally withholding a
// non-blocking result until wait()) and RecordingAccess (a ParamAccess wrapper logging grads()/grads_done()).
#pragma once
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/error.h"
#include "model/param_access.h"

namespace moe::testing {

// One entry of the shared log: what happened, and the unit (Grads, Done) or the request id (Start, Wait,
// Clobbered; ids number the log's reduce-scatter starts from 0).
struct CommEvent {
  enum Kind { Grads, Done, Start, Wait, Blocking, Clobbered, Mark } kind;
  int arg;
};
// Shared by every communicator recording into it (split ones included): `starts` numbers the reduce-scatters.
struct CommLog : std::vector<CommEvent> {
  int starts = 0;
};

// Withhold: a non-blocking reduce-scatter's recv chunk reads NaN from the start until wait() (the true result is
// put back then), and wait() logs Clobbered when the chunk was written meanwhile. Only for a communicator whose
// collectives complete at once (the self communicator): with MPI the transfer itself owns the buffer.
enum class Withhold { No, Yes };

class RecordingComm final : public Communicator {
 public:
  RecordingComm(Communicator& in, CommLog& log, Withhold w) : in_(in), log_(log), withhold_(w) {}
  RecordingComm(std::unique_ptr<Communicator> own, CommLog& log, Withhold w)
      : own_(std::move(own)), in_(*own_), log_(log), withhold_(w) {}
  int rank() const override { return in_.rank(); }
  int size() const override { return in_.size(); }
  MemSpace buffer_space() const override { return in_.buffer_space(); }
  void all_reduce_sum(void* b, i64 n, CommDtype t) override { in_.all_reduce_sum(b, n, t); }
  void iall_reduce_sum(void* b, i64 n, CommDtype t, CommRequest& r) override {
    Entry& e = claim(r);
    in_.iall_reduce_sum(b, n, t, e.inner);
  }
  void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) override {
    log_.push_back({CommEvent::Blocking, -1});
    in_.reduce_scatter_sum(recv, send, n, t);
  }
  void ireduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t, CommRequest& r) override {
    Entry& e = claim(r);
    e.rs_id = log_.starts++;
    log_.push_back({CommEvent::Start, e.rs_id});
    in_.ireduce_scatter_sum(recv, send, n, t, e.inner);
    if (withhold_ == Withhold::Yes && n > 0) {
      MT_CHECK(t == CommDtype::F32, "RecordingComm withholds F32 results only");
      in_.wait(e.inner);  // complete at once on the self communicator
      float* c = static_cast<float*>(recv);
      e.recv = c;
      e.result.assign(c, c + n);
      for (i64 i = 0; i < n; ++i) c[i] = std::numeric_limits<float>::quiet_NaN();
    }
  }
  void all_gather(void* recv, const void* send, i64 n, CommDtype t) override { in_.all_gather(recv, send, n, t); }
  void iall_gather(void* recv, const void* send, i64 n, CommDtype t, CommRequest& r) override {
    Entry& e = claim(r);
    in_.iall_gather(recv, send, n, t, e.inner);
  }
  void wait(CommRequest& r) override {
    if (!r.pending) return;
    MT_CHECK(r.handle < kEntries && busy_[r.handle], "RecordingComm: wait on a request it did not start");
    Entry& e = entries_[r.handle];
    in_.wait(e.inner);
    if (e.rs_id >= 0) {
      log_.push_back({CommEvent::Wait, e.rs_id});
      if (e.recv) {
        for (size_t i = 0; i < e.result.size(); ++i)
          if (!std::isnan(e.recv[i])) {
            log_.push_back({CommEvent::Clobbered, e.rs_id});
            break;
          }
        std::memcpy(e.recv, e.result.data(), e.result.size() * sizeof(float));
      }
    }
    busy_[r.handle] = false;
    r.pending = false;
  }
  void all_to_all_v(const void* send, const i64* sc, const i64* sd, void* recv, const i64* rc, const i64* rd,
                    CommDtype t) override {
    in_.all_to_all_v(send, sc, sd, recv, rc, rd, t);
  }
  void broadcast(void* b, i64 n, CommDtype t, int root) override { in_.broadcast(b, n, t, root); }
  void barrier() override { in_.barrier(); }
  const void* mpi_handle() const override { return in_.mpi_handle(); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<RecordingComm>(in_.split(color, key), log_, withhold_);
  }

 private:
  static constexpr uint64_t kEntries = 64;
  struct Entry {
    CommRequest inner;
    int rs_id = -1;  // reduce-scatters only
    float* recv = nullptr;
    std::vector<float> result;
  };
  Entry& claim(CommRequest& r) {
    MT_CHECK(!r.pending, "request reused before wait()");
    uint64_t k = 0;
    while (k < kEntries && busy_[k]) ++k;
    MT_CHECK(k < kEntries, "RecordingComm: too many requests outstanding");
    busy_[k] = true;
    entries_[k] = Entry{};
    r.handle = k;
    r.pending = true;
    return entries_[k];
  }
  std::unique_ptr<Communicator> own_;
  Communicator& in_;
  CommLog& log_;
  Withhold withhold_;
  Entry entries_[kEntries];
  bool busy_[kEntries] = {};
};

// Forwards to a ParamAccess, logging Grads(unit) and Done(unit) in the same log as the communicators.
template <typename T>
class RecordingAccess final : public ParamAccess<T> {
 public:
  using G = acc_t<T>;
  RecordingAccess(ParamAccess<T>& in, CommLog& log) : in_(in), log_(log) {}
  const T* params(int u, typename ParamAccess<T>::Direction d) override { return in_.params(u, d); }
  const G* params_acc(int u) override { return in_.params_acc(u); }
  void release(int u) override { in_.release(u); }
  G* grads(int u) override {
    log_.push_back({CommEvent::Grads, u});
    return in_.grads(u);
  }
  void grads_done(int u) override {
    log_.push_back({CommEvent::Done, u});
    in_.grads_done(u);
  }

 private:
  ParamAccess<T>& in_;
  CommLog& log_;
};

// The overlap schedule of ZeRO 2–3 gradient reduction in a log, checked; returns the first violation ("" when
// none). No blocking reduce-scatter; every reduce-scatter is started inside a grads_done() (the last Grads/Done
// before its Start is a Done), is waited exactly once, and, when the model requests another unit's gradients
// after the Start and before the next Mark, only after that request (it was pending meanwhile); waits come in
// start order; nothing wrote a withheld result before its wait; every Start is waited before the next Mark.
// `overlapped` counts the reduce-scatters still pending at the next Grads.
inline std::string overlap_violation(const CommLog& log, int* overlapped = nullptr) {
  int ov = 0, last_wait = -1;
  for (size_t i = 0; i < log.size(); ++i) {
    const CommEvent& e = log[i];
    const std::string at = " (event " + std::to_string(i) + ")";
    if (e.kind == CommEvent::Blocking) return "a blocking reduce_scatter_sum" + at;
    if (e.kind == CommEvent::Clobbered) return "reduce-scatter " + std::to_string(e.arg) + " written before its wait" + at;
    if (e.kind == CommEvent::Wait) {
      if (e.arg != last_wait + 1) return "wait of reduce-scatter " + std::to_string(e.arg) + " out of start order" + at;
      last_wait = e.arg;
      continue;
    }
    if (e.kind != CommEvent::Start) continue;
    int j = int(i) - 1;
    while (j >= 0 && log[size_t(j)].kind != CommEvent::Grads && log[size_t(j)].kind != CommEvent::Done) --j;
    if (j < 0 || log[size_t(j)].kind != CommEvent::Done) return "reduce-scatter started outside grads_done" + at;
    size_t wait = log.size(), grads = log.size(), mark = log.size();
    for (size_t k = i + 1; k < log.size(); ++k) {
      const CommEvent& f = log[k];
      if (f.kind == CommEvent::Wait && f.arg == e.arg && wait == log.size()) wait = k;
      if (f.kind == CommEvent::Grads && grads == log.size() && mark == log.size()) grads = k;
      if (f.kind == CommEvent::Mark && mark == log.size()) mark = k;
    }
    if (wait == log.size() || wait > mark) return "reduce-scatter " + std::to_string(e.arg) + " not waited before the mark" + at;
    if (grads < mark) {
      if (wait < grads) return "reduce-scatter " + std::to_string(e.arg) + " waited before the next unit's grads()" + at;
      ++ov;
    }
  }
  if (overlapped) *overlapped = ov;
  return "";
}

}  // namespace moe::testing
