// Owns the named phase timers of one MoE layer (moe-bench): host clock on the CPU, events on a device's stream.
#pragma once
#include <array>
#include <functional>
#include <memory>

#include "core/tensor.h"
#include "moe/moe_phase.h"

namespace moe {

// Times the phases of MoePhase. MoeLayer and its dispatcher call begin/end around each phase when a timer is set
// (MoeLayer::set_phase_timer; no timer: no cost beyond a null check). Between two read_ms() calls each phase may
// be entered at most once (one layer, one forward and one backward): a device timer keeps one event pair per phase.
class PhaseTimer {
 public:
  virtual ~PhaseTimer() = default;
  // Called before an all-to-all phase begins, after the device has finished the work queued so far (e.g. a barrier
  // over the EP group), so that the phase times the exchange itself and not the wait for a slower rank. Optional.
  std::function<void()> before_a2a;

  void begin(MoePhase p) {
    if (is_a2a_phase(p) && before_a2a) {
      synchronize();
      before_a2a();
    }
    mark(2 * int(p));
    entered_[size_t(p)] = true;
  }
  void end(MoePhase p) { mark(2 * int(p) + 1); }
  // Milliseconds per phase since the last read (0 for phases not entered). Waits for the device.
  std::array<double, kMoePhases> read_ms() {
    synchronize();
    std::array<double, kMoePhases> ms{};
    for (int p = 0; p < kMoePhases; ++p)
      if (entered_[size_t(p)]) ms[size_t(p)] = elapsed_ms(2 * p, 2 * p + 1);
    entered_.fill(false);
    return ms;
  }

 protected:
  virtual void mark(int slot) = 0;                      // slot 2p: begin of phase p, 2p+1: its end
  virtual double elapsed_ms(int from, int to) = 0;      // between two marks (after synchronize)
  virtual void synchronize() = 0;

 private:
  std::array<bool, kMoePhases> entered_{};
};

// RAII begin/end of one phase; a null timer does nothing.
class PhaseScope {
 public:
  PhaseScope(PhaseTimer* t, MoePhase p) : t_(t), p_(p) {
    if (t_) t_->begin(p_);
  }
  ~PhaseScope() {
    if (t_) t_->end(p_);
  }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  PhaseTimer* t_;
  MoePhase p_;
};

// The timer of a backend's memory space: Host → std::chrono::steady_clock (ops are synchronous); Cuda → CUDA events
// recorded on `stream` (a cudaStream_t), created here once. BadInput for Cuda in a build without CUDA.
std::unique_ptr<PhaseTimer> make_phase_timer(MemSpace space, void* stream);

}  // namespace moe
