// Owns the host-clock phase timer and the factory choosing it or the CUDA-event one.
#include "moe/phase_timer.h"

#include <chrono>

#include "core/error.h"

namespace moe {

#ifdef MOE_HAVE_CUDA
std::unique_ptr<PhaseTimer> make_cuda_phase_timer(void* stream);  // src/backend/cuda/cuda_phase_timer.cpp
#endif

namespace {

class HostPhaseTimer final : public PhaseTimer {
 protected:
  void mark(int slot) override { t_[size_t(slot)] = std::chrono::steady_clock::now(); }
  double elapsed_ms(int from, int to) override {
    return std::chrono::duration<double, std::milli>(t_[size_t(to)] - t_[size_t(from)]).count();
  }
  void synchronize() override {}  // CPU ops are done when they return

 private:
  std::array<std::chrono::steady_clock::time_point, 2 * kMoePhases> t_{};
};

}  // namespace

std::unique_ptr<PhaseTimer> make_phase_timer(MemSpace space, void* stream) {
  if (space == MemSpace::Host) return std::make_unique<HostPhaseTimer>();
#ifdef MOE_HAVE_CUDA
  return make_cuda_phase_timer(stream);
#else
  (void)stream;
  MT_INPUT_FAIL("phase timers on a device need a build with CUDA");
#endif
}

}  // namespace moe
