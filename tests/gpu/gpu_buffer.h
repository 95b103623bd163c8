// Owns the device buffer of the GoogleTest GPU tests: a host vector uploaded (and landed), read back after a stream.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

namespace moe {

template <typename E>
struct Dev {
  E* p = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<E>& h) : n(h.size()) {
    if (n) {
      EXPECT_EQ(cudaMalloc(&p, n * sizeof(E)), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(E), cudaMemcpyHostToDevice), cudaSuccess);
      // A pageable copy may return before its DMA lands, and the ops run on the backend's non-blocking stream,
      // which does not wait for the legacy stream: wait here.
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
  }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  // Every byte 0xFF (NaN in bf16 and fp32): an output that is accumulated into instead of overwritten shows.
  void poison() {
    if (n) EXPECT_EQ(cudaMemset(p, 0xFF, n * sizeof(E)), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  std::vector<E> back(cudaStream_t s) const {
    EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    std::vector<E> h(n);
    if (n) EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(E), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

}  // namespace moe
