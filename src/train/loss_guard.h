// Owns the loss-spike guard (train.max_loss_ratio, DESIGN §6 exit 3): a step whose loss exceeds ratio × the
// running median of recent losses stops the run before its update, like a divergence.
#pragma once
#include <algorithm>
#include <array>

namespace moe {

class LossSpikeGuard {
 public:
  static constexpr int kWindow = 50;  // losses the median is taken over (the most recent ones)

  // ratio 0 disables the guard; otherwise ratio > 1.
  explicit LossSpikeGuard(double ratio) : ratio_(ratio) {}

  // Returns the median the loss is judged against when `loss` is a spike (loss > ratio × median of the
  // previous losses), else 0. A loss that is not a spike joins the window. The first loss of a run (or of
  // a resumed run: the window is not checkpointed) has nothing to be judged against. No allocation.
  double spike_median(double loss) {
    if (ratio_ > 0 && count_ > 0) {
      const int n = std::min(count_, kWindow);
      std::array<double, kWindow> tmp;
      std::copy(ring_.begin(), ring_.begin() + n, tmp.begin());
      std::nth_element(tmp.begin(), tmp.begin() + n / 2, tmp.begin() + n);
      double median = tmp[size_t(n / 2)];
      if (n % 2 == 0) median = 0.5 * (median + *std::max_element(tmp.begin(), tmp.begin() + n / 2));
      if (loss > ratio_ * median) return median;
    }
    ring_[size_t(count_ % kWindow)] = loss;
    ++count_;
    return 0;
  }
  int window_size() const { return std::min(count_, kWindow); }

 private:
  double ratio_;
  std::array<double, kWindow> ring_{};
  int count_ = 0;
};

}  // namespace moe
