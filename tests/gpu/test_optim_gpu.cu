// Owns the GPU check of the CUDA optimizer table against the CPU table: AdamW (multi-chunk pieces, grad scale, decay
// on/off, a changed piece list), Σg², scale, accumulate and bf16 rounding, all bit for bit; exits 77 without a GPU.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cuda/cuda_context.h"
#include "backend/optim_ops.h"

using namespace moe;

namespace {
int failures = 0;
#define CHECK(cond, ...)                       \
  do {                                         \
    if (!(cond)) {                             \
      ++failures;                              \
      std::printf("FAIL %s: ", #cond);         \
      std::printf(__VA_ARGS__);                \
      std::printf("\n");                       \
    }                                          \
  } while (0)

std::vector<float> randn(i64 n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

template <typename T>
T* to_dev(const std::vector<T>& h) {
  T* d = nullptr;
  if (cudaMalloc(&d, h.size() * sizeof(T) + 1) != cudaSuccess) std::abort();
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaDeviceSynchronize();  // a pageable copy may return before its DMA lands; the ops run on another stream
  return d;
}
template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaDeviceSynchronize();
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}
template <typename T>
i64 first_diff(const std::vector<T>& a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return i64(i);
  return -1;
}

struct Tensor4 {
  std::vector<float> p, g, m, v;
};

void test_adamw(OptimOps& gpu, OptimOps& cpu) {
  // Sizes around the 32768-element chunk and the CPU's 16384-element work items and vector widths.
  const std::vector<i64> sizes = {1, 3, 8, 255, 257, 32767, 32768, 32769, 100003, 5};
  std::vector<Tensor4> h;
  std::vector<float*> dp, dg, dm, dv;
  uint32_t seed = 1;
  for (i64 n : sizes) {
    Tensor4 t{randn(n, seed, 1.f), randn(n, seed + 1, 0.05f), randn(n, seed + 2, 0.01f), randn(n, seed + 3, 0.01f)};
    for (float& x : t.v) x = x * x;
    seed += 4;
    dp.push_back(to_dev(t.p));
    dg.push_back(to_dev(t.g));
    dm.push_back(to_dev(t.m));
    dv.push_back(to_dev(t.v));
    h.push_back(std::move(t));
  }
  auto pieces_of = [&](bool dev, size_t first) {
    std::vector<AdamWPiece> out;
    for (size_t k = first; k < sizes.size(); ++k) {
      if (dev)
        out.push_back({dp[k], dg[k], dm[k], dv[k], sizes[k], k % 3 != 1});
      else
        out.push_back({h[k].p.data(), h[k].g.data(), h[k].m.data(), h[k].v.data(), sizes[k], k % 3 != 1});
    }
    return out;
  };
  const AdamWHyper hp{2e-3, 0.9, 0.95, 1e-8, 0.1};
  const std::vector<AdamWPiece> cpu_all = pieces_of(false, 0), gpu_all = pieces_of(true, 0);
  const std::vector<AdamWPiece> cpu_tail = pieces_of(false, 4), gpu_tail = pieces_of(true, 4);
  for (long t = 1; t <= 4; ++t) {
    const float gs = t == 2 ? 0.625f : 1.f;
    // Step 3 updates a different (shorter) piece list: the device table is staged again, then back for step 4.
    cpu.adamw(t == 3 ? cpu_tail : cpu_all, hp, t, gs);
    gpu.adamw(t == 3 ? gpu_tail : gpu_all, hp, t, gs);
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    const size_t n = size_t(sizes[k]);
    const i64 ep = first_diff(to_host(dp[k], n), h[k].p), em = first_diff(to_host(dm[k], n), h[k].m),
              ev = first_diff(to_host(dv[k], n), h[k].v);
    CHECK(ep < 0 && em < 0 && ev < 0, "adamw piece %zu (n %zu): first differing element p %lld m %lld v %lld", k, n,
          (long long)ep, (long long)em, (long long)ev);
    cudaFree(dp[k]);
    cudaFree(dg[k]);
    cudaFree(dm[k]);
    cudaFree(dv[k]);
  }
}

void test_grad_sq_sum(OptimOps& gpu, OptimOps& cpu) {
  for (i64 n : {i64(0), i64(1), i64(7), i64(4095), i64(4096), i64(4097), i64(65536 + 13), i64(3000001)}) {
    const std::vector<float> g = randn(n, uint32_t(n) + 100, 3.f);
    float* d = to_dev(g);
    const double a = gpu.grad_sq_sum(d, n), b = cpu.grad_sq_sum(g.data(), n);
    CHECK(std::memcmp(&a, &b, sizeof a) == 0, "grad_sq_sum n %lld: gpu %.17g cpu %.17g", (long long)n, a, b);
    // Twice on the GPU: the same bits (no atomics).
    const double a2 = gpu.grad_sq_sum(d, n);
    CHECK(std::memcmp(&a, &a2, sizeof a) == 0, "grad_sq_sum n %lld not deterministic", (long long)n);
    cudaFree(d);
  }
}

void test_scale_and_round(OptimOps& gpu, OptimOps& cpu) {
  const i64 n = 1000003;
  std::vector<float> x = randn(n, 7, 10.f);
  float* d = to_dev(x);
  gpu.scale(d, n, 0.3712f);
  cpu.scale(x.data(), n, 0.3712f);
  CHECK(first_diff(to_host(d, size_t(n)), x) < 0, "scale differs");
  std::vector<bf16> hb(static_cast<size_t>(n));
  bf16* db = nullptr;
  cudaMalloc(&db, size_t(n) * sizeof(bf16));
  gpu.round_to_bf16(db, d, n);
  cpu.round_to_bf16(hb.data(), x.data(), n);
  std::vector<bf16> gb = to_host(db, size_t(n));
  CHECK(first_diff(gb, hb) < 0, "round_to_bf16 differs at %lld", (long long)first_diff(gb, hb));
  std::vector<float> y = randn(n, 8, 3.f);
  float* dy = to_dev(y);
  gpu.accumulate(d, dy, n);
  cpu.accumulate(x.data(), y.data(), n);
  CHECK(first_diff(to_host(d, size_t(n)), x) < 0, "accumulate differs");
  gpu.accumulate(d, dy, 0);
  cudaFree(dy);
  gpu.scale(d, 0, 2.f);  // 0-sized launches are no-ops
  gpu.round_to_bf16(db, d, 0);
  cudaFree(d);
  cudaFree(db);
}
}  // namespace

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: skipping the CUDA optimizer ops test\n");
    return 77;
  }
  try {
    CudaContext ctx(0);
    std::unique_ptr<OptimOps> gpu = make_cuda_optim_ops(ctx), cpu = make_cpu_optim_ops();
    test_adamw(*gpu, *cpu);
    test_grad_sq_sum(*gpu, *cpu);
    test_scale_and_round(*gpu, *cpu);
    const cudaError_t e = cudaDeviceSynchronize();
    CHECK(e == cudaSuccess, "device error: %s", cudaGetErrorString(e));
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("CUDA optimizer ops vs CPU table: %s\n", failures ? "MISMATCH" : "bitwise equal");
  return failures ? 1 : 0;
}
