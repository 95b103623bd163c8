// Owns the CUDA-event phase timer of moe/phase_timer.h: one event pair per MoE phase, recorded on the backend stream.
#include <array>
#include <memory>

#include "backend/cuda/cuda_check.h"
#include "moe/phase_timer.h"

namespace moe {

namespace {

class CudaPhaseTimer final : public PhaseTimer {
 public:
  explicit CudaPhaseTimer(cudaStream_t stream) : stream_(stream) {
    for (cudaEvent_t& e : ev_) MT_CUDA(cudaEventCreate(&e));
  }
  ~CudaPhaseTimer() override {
    for (cudaEvent_t e : ev_)
      if (e) cudaEventDestroy(e);
  }

 protected:
  void mark(int slot) override { MT_CUDA(cudaEventRecord(ev_[size_t(slot)], stream_)); }
  double elapsed_ms(int from, int to) override {
    float ms = 0;
    MT_CUDA(cudaEventElapsedTime(&ms, ev_[size_t(from)], ev_[size_t(to)]));
    return double(ms);
  }
  void synchronize() override { MT_CUDA(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_;
  std::array<cudaEvent_t, 2 * kMoePhases> ev_{};
};

}  // namespace

std::unique_ptr<PhaseTimer> make_cuda_phase_timer(void* stream) {
  return std::make_unique<CudaPhaseTimer>(static_cast<cudaStream_t>(stream));
}

}  // namespace moe
