// Tests the loss-spike guard (train.max_loss_ratio, DESIGN §6 exit 3): median window, 1-nat floor, first loss.
#include <gtest/gtest.h>

#include <cmath>

#include "train/loss_guard.h"

namespace moe {

TEST(LossGuard, BlowUpIsASpike) {
  LossSpikeGuard g(10.0);
  EXPECT_EQ(g.spike_median(3.47), 0.0);  // the first loss has nothing to be judged against
  EXPECT_NEAR(g.spike_median(440.0), 3.47, 1e-12);
}

TEST(LossGuard, MedianNotMeanOfTheWindow) {
  // One outlier in the window (kept: 30 < 10 x 3) moves a mean a lot but not the median.
  LossSpikeGuard g(10.0);
  for (double l : {4.0, 3.0, 30.0, 2.0}) ASSERT_EQ(g.spike_median(l), 0.0) << l;
  EXPECT_NEAR(g.spike_median(36.0), 3.5, 1e-12);  // median of {4, 3, 30, 2} = 3.5; the mean (9.75) would pass 36
}

TEST(LossGuard, NoiseNearZeroIsNotASpike) {
  // A run memorising a small set: losses around 0.01 with 10x noise. The 1-nat floor keeps it running.
  LossSpikeGuard g(10.0);
  for (int i = 0; i < 200; ++i) {
    const double l = 0.01 * (1.0 + 12.0 * double((i * 37) % 11 == 0));  // 0.01, sometimes 0.13
    ASSERT_EQ(g.spike_median(l), 0.0) << "step " << i << " loss " << l;
  }
  EXPECT_GT(g.spike_median(10.5), 0.0);  // above 10 x max(median, 1 nat): still caught
}

TEST(LossGuard, OffWhenRatioIsZero) {
  LossSpikeGuard g(0.0);
  g.spike_median(1.0);
  EXPECT_EQ(g.spike_median(1e9), 0.0);
}

TEST(LossGuard, WindowForgetsOldLosses) {
  LossSpikeGuard g(10.0);
  for (int i = 0; i < 60; ++i) g.spike_median(100.0);  // a high start
  for (int i = 0; i < LossSpikeGuard::kWindow; ++i) g.spike_median(2.0);
  EXPECT_GT(g.spike_median(25.0), 0.0);  // judged against the last 50 (median 2), not the start (100)
  EXPECT_EQ(g.window_size(), LossSpikeGuard::kWindow);
}

}  // namespace moe
