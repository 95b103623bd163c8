// Owns the GPU-vs-CPU-twin checks of the CUDA kernels; exits 77 (CTest SKIP) when no GPU is present.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/kernels_cuda.h"
#include "kernels/ref/rmsnorm_ref.h"
#include "kernels/ref/swiglu_ref.h"

using moe::i64;

static int failures = 0;

// |got − want| ≤ atol + rtol·|want| everywhere (llm.c validate_result style), stops after 5 reports.
static void expect_close(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                         float atol, float rtol) {
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::fabs(got[i] - want[i]) > atol + rtol * std::fabs(want[i])) {
      if (bad++ < 5) std::printf("%s[%zu]: gpu %g cpu %g\n", what, i, got[i], want[i]);
    }
  }
  std::printf("%s: %s\n", what, bad ? "MISMATCH" : "ok");
  failures += bad > 0;
}

template <typename F>
static std::vector<float> on_gpu(const std::vector<std::vector<float>>& ins, size_t out_n, F launch) {
  std::vector<float*> d(ins.size());
  for (size_t i = 0; i < ins.size(); ++i) {
    cudaMalloc(&d[i], ins[i].size() * sizeof(float));
    cudaMemcpy(d[i], ins[i].data(), ins[i].size() * sizeof(float), cudaMemcpyHostToDevice);
  }
  launch(d);
  cudaDeviceSynchronize();
  std::vector<float> out(out_n);
  cudaMemcpy(out.data(), d[0], out_n * sizeof(float), cudaMemcpyDeviceToHost);
  for (float* p : d) cudaFree(p);
  return out;
}

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: skipping GPU kernel tests\n");
    return 77;
  }
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  auto randv = [&](size_t k) {
    std::vector<float> v(k);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  // Odd shapes on purpose.
  const i64 N = 257, C = 259;
  auto x = randv(N * C), w = randv(C), dy = randv(N * C);
  std::vector<float> y(N * C), rstd(N), dx(N * C), dw(C, 0.f);
  moe::rmsnorm_forward_ref<float>(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
  moe::rmsnorm_backward_ref<float>(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
  auto gy = on_gpu({std::vector<float>(N * C), std::vector<float>(N), x, w}, N * C, [&](std::vector<float*>& d) {
    moe::rmsnorm_forward_cuda(d[0], d[1], d[2], d[3], N, C, 1e-5, nullptr);
  });
  expect_close("rmsnorm_forward", gy, y, 1e-5f, 1e-5f);
  auto gdx = on_gpu({std::vector<float>(N * C), std::vector<float>(C, 0.f), dy, x, w, rstd}, N * C,
                    [&](std::vector<float*>& d) { moe::rmsnorm_backward_cuda(d[0], d[1], d[2], d[3], d[4], d[5], N, C, nullptr); });
  expect_close("rmsnorm_backward_dx", gdx, dx, 1e-5f, 1e-4f);
  auto gdw = on_gpu({std::vector<float>(C, 0.f), dy, x, rstd}, C, [&](std::vector<float*>& d) {
    float* dxs = nullptr;
    cudaMalloc(&dxs, N * C * sizeof(float));
    float* wd = nullptr;
    cudaMalloc(&wd, C * sizeof(float));
    cudaMemcpy(wd, w.data(), C * sizeof(float), cudaMemcpyHostToDevice);
    moe::rmsnorm_backward_cuda(dxs, d[0], d[1], d[2], wd, d[3], N, C, nullptr);
    cudaDeviceSynchronize();
    cudaFree(dxs);
    cudaFree(wd);
  });
  expect_close("rmsnorm_backward_dw", gdw, dw, 1e-3f, 1e-4f);

  const i64 M = 1000003;
  auto a = randv(M), b = randv(M), dh = randv(M);
  std::vector<float> h(M), da(M), db(M);
  moe::swiglu_forward_ref<float>(h.data(), a.data(), b.data(), M);
  moe::swiglu_backward_ref<float>(da.data(), db.data(), dh.data(), a.data(), b.data(), M);
  auto gh = on_gpu({std::vector<float>(M), a, b}, M, [&](std::vector<float*>& d) { moe::swiglu_forward_cuda(d[0], d[1], d[2], M, nullptr); });
  expect_close("swiglu_forward", gh, h, 1e-6f, 1e-5f);
  auto gda = on_gpu({std::vector<float>(M), std::vector<float>(M), dh, a, b}, M,
                    [&](std::vector<float*>& d) { moe::swiglu_backward_cuda(d[0], d[1], d[2], d[3], d[4], M, nullptr); });
  expect_close("swiglu_backward_da", gda, da, 1e-6f, 1e-5f);
  return failures ? 1 : 0;
}
