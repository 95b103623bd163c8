// Owns gpu-grouped-gemm: the GPU's measured bf16 GEMM peak and the expert GEMMs of one MoE layer (per-expert cuBLASLt, cuBLAS grouped-batched) against one dense GEMM of equal FLOPs.
//
// Run: gpu-grouped-gemm [--iters 20] [--warmup 3] [--no-peak]
// 1. Peak: C[8192,8192] = A[8192,8192]·B[8192,8192]ᵀ in bf16 with fp32 accumulation (cublasGemmEx, random data:
//    zeros run faster), mean of --iters after --warmup; printed as PEAK_TFLOPS=… (bench/gpu_train_throughput.sh
//    divides model FLOP/s by it) and against the 989 TFLOP/s H100/H200 SXM datasheet figure.
// 2. Expert GEMMs of one MoE layer, T tokens × top-2 = R rows spread unevenly over E = 8 experts (row shares
//    1.3, 0.7, 1.1, 0.9, 1.2, 0.8, 1.05, 0.95 of R/E: routing is never even), for the three GEMM kinds of an expert
//    MLP (row-major, weights [out, in] as in src/moe/experts.h):
//      up    y_e[r_e, 2I] = x_e[r_e, H] · [W1;W3]_eᵀ      (gate and up stacked, one GEMM)
//      down  y_e[r_e, H]  = h_e[r_e, I] · W2_eᵀ
//      wgrad dW_e[2I, H] += dy_e[r_e, 2I]ᵀ · x_e[r_e, H]   (the weight gradient of up: reduction over the rows,
//                                                         accumulated into fp32 as DESIGN §8 says)
//    each as (a) one cuBLASLt matmul per expert (plan and algorithm chosen before timing), (b) one
//    cublasGemmGroupedBatchedEx call over the experts (if this cuBLAS supports it for bf16), against (c) ONE dense
//    cuBLASLt GEMM of the same FLOPs (rows R = Σ r_e; for wgrad the reduction over R). ratio = TFLOP/s of (a)/(c)
//    summed over the three kinds (time-weighted); the target is ≥ 0.85.
// When the CUDA MoE ops' grouped GEMM (src/backend/cuda/grouped_gemm.h) lands, (a) should call it instead.
// Besides the human-readable lines it prints ROW|name|verdict|figure lines for tests/gpu/device_check.sh.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"

namespace {

using bf = __nv_bfloat16;
constexpr double kDatasheetTflops = 989.0;  // H100/H200 SXM dense bf16 (NVIDIA datasheet)
constexpr double kTarget = 0.85;

// Uniform values in [-1, 1) from a hash of the index (no RNG state; the same data every run).
__global__ void fill_kernel(bf* p, long long n, unsigned seed) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    unsigned long long h = (unsigned long long)i * 0x9E3779B97F4A7C15ull + seed;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    p[i] = __float2bfloat16(float(h >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

bf* device_random(long long n, unsigned seed) {
  bf* p = nullptr;
  MT_CUDA(cudaMalloc(&p, size_t(n) * sizeof(bf)));
  fill_kernel<<<1024, 256>>>(p, n, seed);
  MT_CUDA_LAUNCH("fill_kernel");
  MT_CUDA(cudaDeviceSynchronize());  // the timed work runs on a non-blocking stream
  return p;
}

// One column-major cuBLASLt matmul C[m,n] = op(A)·op(B) + beta·C (bf16 inputs, fp32 compute; C bf16, or fp32 with
// beta 1 for weight gradients accumulated into fp32, DESIGN §8), its algorithm chosen once.
struct LtGemm {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  const void *A = nullptr, *B = nullptr;
  void* C = nullptr;
  float beta = 0.f;
  double flops = 0;
};

LtGemm make_lt(cublasLtHandle_t lt, void* ws, size_t ws_bytes, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
               int k, const void* A, int lda, const void* B, int ldb, void* C, int ldc, bool fp32_acc = false) {
  LtGemm g;
  g.A = A, g.B = B, g.C = C;
  g.beta = fp32_acc ? 1.f : 0.f;
  g.flops = 2.0 * m * n * double(k);
  MT_CUBLAS(cublasLtMatmulDescCreate(&g.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  MT_CUBLAS(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  MT_CUBLAS(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  MT_CUBLAS(cublasLtMatrixLayoutCreate(&g.a, CUDA_R_16BF, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda));
  MT_CUBLAS(cublasLtMatrixLayoutCreate(&g.b, CUDA_R_16BF, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb));
  MT_CUBLAS(cublasLtMatrixLayoutCreate(&g.c, fp32_acc ? CUDA_R_32F : CUDA_R_16BF, m, n, ldc));
  cublasLtMatmulPreference_t pref = nullptr;
  MT_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  MT_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                 sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  MT_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt, g.desc, g.a, g.b, g.c, g.c, pref, 1, &res, &found));
  MT_CHECK(found > 0, "cuBLASLt has no algorithm for ", m, "x", n, "x", k);
  g.algo = res.algo;
  cublasLtMatmulPreferenceDestroy(pref);
  (void)ws;
  return g;
}

void run_lt(cublasLtHandle_t lt, const LtGemm& g, void* ws, size_t ws_bytes, cudaStream_t s) {
  const float one = 1.f;
  MT_CUBLAS(cublasLtMatmul(lt, g.desc, &one, g.A, g.a, g.B, g.b, &g.beta, g.C, g.c, g.C, g.c, &g.algo, ws, ws_bytes, s));
}

void destroy_lt(LtGemm& g) {
  cublasLtMatrixLayoutDestroy(g.a);
  cublasLtMatrixLayoutDestroy(g.b);
  cublasLtMatrixLayoutDestroy(g.c);
  cublasLtMatmulDescDestroy(g.desc);
}

// Mean milliseconds of fn() over iters calls after warmup calls (CUDA events on stream s).
template <typename F>
double time_ms(F fn, int warmup, int iters, cudaStream_t s) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t e0, e1;
  MT_CUDA(cudaEventCreate(&e0));
  MT_CUDA(cudaEventCreate(&e1));
  MT_CUDA(cudaEventRecord(e0, s));
  for (int i = 0; i < iters; ++i) fn();
  MT_CUDA(cudaEventRecord(e1, s));
  MT_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  MT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return double(ms) / iters;
}

struct Shape {
  const char* name;
  long long T, H, I;
  int E;
};

struct KindResult {
  double flops = 0, ms_lt = 0, ms_grouped = -1, ms_dense = 0;  // ms_grouped < 0: not supported
};

// One GEMM kind (up, down or wgrad) for every expert: per-expert Lt, grouped-batched, and the dense equivalent.
// Row-major problem C_e = X_e · W_eᵀ ([r_e, K]·[N, K]ᵀ) or, for wgrad, C_e = dY_eᵀ · X_e ([r_e, N]ᵀ·[r_e, K]).
KindResult bench_kind(cublasLtHandle_t lt, cublasHandle_t blas, void* ws, size_t ws_bytes, cudaStream_t s,
                      const std::vector<int>& rows, long long N, long long K, bool wgrad, int warmup, int iters) {
  const int E = int(rows.size());
  long long R = 0;
  for (int r : rows) R += r;
  // Activations [R, K] and [R, N] (expert-major row blocks), weights / weight gradients [E, N, K].
  bf* X = device_random(R * K, 1);
  bf* Y = device_random(R * N, 2);
  bf* W = device_random(E * N * K, 3);
  float* Cw = nullptr;  // wgrad outputs [E, N, K], fp32 accumulated
  if (wgrad) MT_CUDA(cudaMalloc(&Cw, size_t(E * N * K) * sizeof(float)));
  if (wgrad) MT_CUDA(cudaMemset(Cw, 0, size_t(E * N * K) * sizeof(float)));
  std::vector<LtGemm> per;
  long long off = 0;
  std::vector<const void*> hA(E), hB(E);
  std::vector<void*> hC(E);
  for (int e = 0; e < E; ++e) {
    const int r = rows[e];
    if (!wgrad) {
      // column-major: Cᵀ[N, r] = W_e[K×N]ᵀ · Xᵀ[K×r]
      per.push_back(make_lt(lt, ws, ws_bytes, CUBLAS_OP_T, CUBLAS_OP_N, int(N), r, int(K), W + e * N * K, int(K),
                            X + off * K, int(K), Y + off * N, int(N)));
      hA[e] = W + e * N * K, hB[e] = X + off * K, hC[e] = Y + off * N;
    } else {
      // column-major: Cᵀ[K, N] = Xᵀ[K×r] · dY[N×r]ᵀ
      per.push_back(make_lt(lt, ws, ws_bytes, CUBLAS_OP_N, CUBLAS_OP_T, int(K), int(N), r, X + off * K, int(K),
                            Y + off * N, int(N), Cw + e * N * K, int(K), true));
      hA[e] = X + off * K, hB[e] = Y + off * N, hC[e] = Cw + e * N * K;
    }
    off += r;
  }
  LtGemm dense = !wgrad ? make_lt(lt, ws, ws_bytes, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(R), int(K), W, int(K), X,
                                  int(K), Y, int(N))
                        : make_lt(lt, ws, ws_bytes, CUBLAS_OP_N, CUBLAS_OP_T, int(K), int(N), int(R), X, int(K), Y,
                                  int(N), Cw, int(K), true);
  KindResult out;
  for (const LtGemm& g : per) out.flops += g.flops;
  out.ms_lt = time_ms([&] { for (const LtGemm& g : per) run_lt(lt, g, ws, ws_bytes, s); }, warmup, iters, s);
  out.ms_dense = time_ms([&] { run_lt(lt, dense, ws, ws_bytes, s); }, warmup, iters, s);

  // Grouped-batched: one group per expert (its own m/n/k), pointer arrays in device memory.
  std::vector<cublasOperation_t> ta(E), tb(E);
  std::vector<int> m(E), n(E), k(E), lda(E), ldb(E), ldc(E), gsize(E, 1);
  std::vector<float> alpha(E, 1.f), beta(E, wgrad ? 1.f : 0.f);
  for (int e = 0; e < E; ++e) {
    if (!wgrad) ta[e] = CUBLAS_OP_T, tb[e] = CUBLAS_OP_N, m[e] = int(N), n[e] = rows[e], k[e] = int(K),
                lda[e] = int(K), ldb[e] = int(K), ldc[e] = int(N);
    else ta[e] = CUBLAS_OP_N, tb[e] = CUBLAS_OP_T, m[e] = int(K), n[e] = int(N), k[e] = rows[e], lda[e] = int(K),
         ldb[e] = int(N), ldc[e] = int(K);
  }
  void** dptr = nullptr;
  MT_CUDA(cudaMalloc(&dptr, 3 * E * sizeof(void*)));
  MT_CUDA(cudaMemcpy(dptr, hA.data(), E * sizeof(void*), cudaMemcpyHostToDevice));
  MT_CUDA(cudaMemcpy(dptr + E, hB.data(), E * sizeof(void*), cudaMemcpyHostToDevice));
  MT_CUDA(cudaMemcpy(dptr + 2 * E, hC.data(), E * sizeof(void*), cudaMemcpyHostToDevice));
  auto grouped = [&] {
    return cublasGemmGroupedBatchedEx(blas, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
                                      (const void* const*)dptr, CUDA_R_16BF, lda.data(), (const void* const*)(dptr + E),
                                      CUDA_R_16BF, ldb.data(), beta.data(), dptr + 2 * E, wgrad ? CUDA_R_32F : CUDA_R_16BF, ldc.data(), E,
                                      gsize.data(), CUBLAS_COMPUTE_32F);
  };
  const cublasStatus_t st = grouped();
  if (st == CUBLAS_STATUS_SUCCESS) {
    out.ms_grouped = time_ms([&] { MT_CUBLAS(grouped()); }, warmup, iters, s);
  } else {
    std::printf("  (cublasGemmGroupedBatchedEx: %s)\n", cublasGetStatusString(st));
  }
  MT_CUDA(cudaStreamSynchronize(s));
  for (LtGemm& g : per) destroy_lt(g);
  destroy_lt(dense);
  cudaFree(dptr);
  cudaFree(X);
  cudaFree(Y);
  cudaFree(W);
  if (Cw) cudaFree(Cw);
  return out;
}

double tflops(double flops, double ms) { return ms > 0 ? flops / (ms * 1e-3) / 1e12 : 0; }

}  // namespace

int main(int argc, char** argv) {
  int warmup = 3, iters = 20;
  bool peak = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--no-peak")) peak = false;
    else {
      std::fprintf(stderr, "usage: gpu-grouped-gemm [--iters N] [--warmup N] [--no-peak]\n");
      return 2;
    }
  }
  int ngpu = 0;
  if (cudaGetDeviceCount(&ngpu) != cudaSuccess || ngpu == 0) {
    std::printf("ROW|cublas_bf16_peak|skip: no GPU|\nROW|grouped_gemm_vs_dense|skip: no GPU|\n");
    return 77;
  }
  try {
    cudaDeviceProp prop{};
    MT_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("GPU: %s, %d SMs, compute capability %d.%d\n", prop.name, prop.multiProcessorCount, prop.major,
                prop.minor);
    cudaStream_t s;
    MT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cublasLtHandle_t lt;
    cublasHandle_t blas;
    MT_CUBLAS(cublasLtCreate(&lt));
    MT_CUBLAS(cublasCreate(&blas));
    MT_CUBLAS(cublasSetStream(blas, s));
    const size_t ws_bytes = size_t(32) << 20;
    void* ws = nullptr;
    MT_CUDA(cudaMalloc(&ws, ws_bytes));
    MT_CUBLAS(cublasSetWorkspace(blas, ws, ws_bytes));

    if (peak) {
      const long long n = 8192;
      bf* A = device_random(n * n, 11);
      bf* B = device_random(n * n, 12);
      bf* C = device_random(n * n, 13);
      const float one = 1.f, zero = 0.f;
      auto gemm = [&] {
        MT_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(n), int(n), &one, A, CUDA_R_16BF, int(n), B,
                               CUDA_R_16BF, int(n), &zero, C, CUDA_R_16BF, int(n), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
      };
      const double ms = time_ms(gemm, warmup, iters, s);
      const double tf = tflops(2.0 * n * n * n, ms);
      std::printf("peak: 8192^3 bf16 GEMM (cublasGemmEx, fp32 accumulate) %.3f ms = %.1f TFLOP/s (%.0f%% of the "
                  "%.0f TFLOP/s datasheet)\n",
                  ms, tf, 100 * tf / kDatasheetTflops, kDatasheetTflops);
      std::printf("PEAK_TFLOPS=%.1f\n", tf);
      std::printf("ROW|cublas_bf16_peak|pass|8192³ bf16 cublasGemmEx: %.1f TFLOP/s = %.0f%% of the %.0f TFLOP/s datasheet\n",
                  tf, 100 * tf / kDatasheetTflops, kDatasheetTflops);
      cudaFree(A);
      cudaFree(B);
      cudaFree(C);
    }

    const Shape shapes[] = {{"bench model (H 2048, I 4096)", 8192, 2048, 4096, 8},
                            {"Mixtral-8x7B widths (H 4096, I 14336)", 8192, 4096, 14336, 8}};
    const double share[8] = {1.3, 0.7, 1.1, 0.9, 1.2, 0.8, 1.05, 0.95};
    std::string fig;
    double worst = 1e9;
    for (const Shape& sh : shapes) {
      const long long R = sh.T * 2;  // top-2
      std::vector<int> rows(sh.E);
      long long used = 0;
      for (int e = 0; e < sh.E; ++e) {
        rows[e] = e + 1 < sh.E ? int(std::lround(share[e % 8] * double(R) / sh.E)) : int(R - used);
        used += rows[e];
      }
      std::printf("%s: T %lld tokens x top-2 = %lld rows over %d experts (%d..%d rows each)\n", sh.name, sh.T, R, sh.E,
                  rows[1], rows[0]);
      struct {
        const char* name;
        long long N, K;
        bool wgrad;
      } kinds[] = {{"up    [r,H]x[2I,H]^T", 2 * sh.I, sh.H, false},
                   {"down  [r,I]x[H,I]^T ", sh.H, sh.I, false},
                   {"wgrad [r,2I]^T x [r,H]", 2 * sh.I, sh.H, true}};
      double f = 0, t_lt = 0, t_g = 0, t_d = 0;
      bool grouped_ok = true;
      for (const auto& k : kinds) {
        const KindResult r = bench_kind(lt, blas, ws, ws_bytes, s, rows, k.N, k.K, k.wgrad, warmup, iters);
        std::printf("  %-24s per-expert Lt %7.1f TFLOP/s | grouped-batched %s | dense %7.1f TFLOP/s | ratio Lt/dense %.3f\n",
                    k.name, tflops(r.flops, r.ms_lt),
                    r.ms_grouped < 0 ? "  n/a  " : (std::to_string(int(tflops(r.flops, r.ms_grouped))) + " TFLOP/s").c_str(),
                    tflops(r.flops, r.ms_dense), r.ms_dense / r.ms_lt);
        f += r.flops, t_lt += r.ms_lt, t_d += r.ms_dense;
        if (r.ms_grouped < 0) grouped_ok = false;
        else t_g += r.ms_grouped;
      }
      const double ratio = t_d / t_lt;
      worst = std::min(worst, ratio);
      std::printf("  all three: per-expert Lt %.1f TFLOP/s, dense %.1f TFLOP/s: ratio %.3f (target >= %.2f)",
                  tflops(f, t_lt), tflops(f, t_d), ratio, kTarget);
      if (grouped_ok) std::printf("; grouped-batched %.1f TFLOP/s: ratio %.3f", tflops(f, t_g), t_d / t_g);
      std::printf("\n");
      char buf[256];
      std::snprintf(buf, sizeof buf, "%sH %lld I %lld: %.0f vs %.0f TFLOP/s = %.2f%s", fig.empty() ? "" : "; ", sh.H,
                    sh.I, tflops(f, t_lt), tflops(f, t_d), ratio,
                    grouped_ok ? (" (grouped-batched " + std::to_string(t_d / t_g).substr(0, 4) + ")").c_str() : "");
      fig += buf;
    }
    std::printf("ROW|grouped_gemm_vs_dense|%s|per-expert cuBLASLt vs one dense GEMM of equal FLOPs, 8 experts, "
                "16384 rows: %s\n",
                worst >= kTarget ? "pass" : ("fail: ratio " + std::to_string(worst).substr(0, 4) + " below the 0.85 target").c_str(),
                fig.c_str());
    cudaFree(ws);
    cublasDestroy(blas);
    cublasLtDestroy(lt);
    cudaStreamDestroy(s);
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  return 0;
}
