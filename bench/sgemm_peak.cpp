// Owns the machine's measured fp32 GEMM peak (OpenBLAS sgemm, the library moe-train uses): the denominator of the benchmarks' FLOP/s share.
//
// Usage: sgemm-peak [N=2048] [reps=10]   (threads from OMP_NUM_THREADS / OPENBLAS_NUM_THREADS)
// Prints one JSON line: {"n":N,"gflops":best,"median_gflops":median} over reps timed N×N×N sgemm calls after one warm-up.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/ref/gemm_ref.h"

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 2048;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 10;
  if (n <= 0 || reps <= 0) {
    std::fprintf(stderr, "usage: sgemm-peak [N>0] [reps>0]\n");
    return 2;
  }
  std::vector<float> a(size_t(n * n)), b(size_t(n * n)), c(size_t(n * n));
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = float(i % 7) * 0.1f;
    b[i] = float(i % 5) * 0.1f;
  }
  auto run = [&] {
    moe::gemm_ref<float>(c.data(), a.data(), b.data(), n, n, n, moe::Trans::No, moe::Trans::No, n, n, n, 1.f, 0.f);
  };
  run();
  std::vector<double> gf;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    gf.push_back(2.0 * double(n) * n * n / s / 1e9);
  }
  std::sort(gf.begin(), gf.end());
  std::printf("{\"n\":%ld,\"gflops\":%.2f,\"median_gflops\":%.2f}\n", n, gf.back(), gf[gf.size() / 2]);
  return 0;
}
