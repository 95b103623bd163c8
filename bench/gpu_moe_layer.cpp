// Owns gpu-moe-layer: how much of one MoE layer's forward + backward on the GPU is routing (router, plan, permute, combine and their backward) rather than expert GEMMs.
//
// Run: gpu-moe-layer [--tokens 8192] [--hidden 2048] [--ffn 4096] [--experts 8] [--topk 2] [--iters 10] [--warmup 3]
// Timing variants on the CUDA backend (make_backend<bf16>(Device::Cuda, 0)), CUDA events on the backend's stream,
// mean over --iters after --warmup:
//   layer:   MoeLayer<bf16>::forward (Train mode, dropless, no jitter or dropout) + MoeLayer::backward;
//   experts: MoeOps::grouped_mlp_forward + grouped_mlp_backward alone, on row blocks of the same per-expert counts
//            (the last forward's routed counts) — the expert GEMMs and SwiGLU the layer runs inside.
// routing fraction = (layer − experts) / layer: router GEMM/softmax/top-k, the plan, its one device→host copy,
// permute/unpermute, combine and the router backward. The default shape is one MoE layer of
// bench/gpu_mixtral_1gpu.yaml (seq 2048 × batch 4 tokens, hidden 2048, expert width 4096, 8 experts top-2).
// Prints ROW|moe_routing_fraction|verdict|figure for tests/gpu/device_check.sh; exits 77 without a GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/arena.h"
#include "moe/moe_layer.h"

using namespace moe;

namespace {

// Host values ~ N(0, scale²) copied into a new buffer of the backend.
template <typename U>
Buffer<U> random_buffer(MemOps& mem, i64 n, double scale, uint32_t seed, const char* what) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, float(scale));
  std::vector<U> h(static_cast<size_t>(n));
  for (auto& v : h) v = U(nd(rng));
  Buffer<U> b(mem, n, what);
  mem.to_backend(b.data(), h.data(), n * i64(sizeof(U)));
  return b;
}

// Mean milliseconds of fn() over iters calls after warmup calls, CUDA events on stream s.
template <typename F>
double time_ms(F fn, int warmup, int iters, cudaStream_t s) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0, s);
  for (int i = 0; i < iters; ++i) fn();
  cudaEventRecord(e1, s);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const cudaError_t e = cudaGetLastError();
  MT_CHECK(e == cudaSuccess, "CUDA error while timing: ", cudaGetErrorString(e));
  return double(ms) / iters;
}

}  // namespace

int main(int argc, char** argv) {
  i64 T = 8192, H = 2048, I = 4096, E = 8, K = 2;
  int iters = 10, warmup = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char* k = argv[i];
    const long long v = std::atoll(argv[i + 1]);
    if (!std::strcmp(k, "--tokens")) T = v;
    else if (!std::strcmp(k, "--hidden")) H = v;
    else if (!std::strcmp(k, "--ffn")) I = v;
    else if (!std::strcmp(k, "--experts")) E = v;
    else if (!std::strcmp(k, "--topk")) K = v;
    else if (!std::strcmp(k, "--iters")) iters = int(v);
    else if (!std::strcmp(k, "--warmup")) warmup = int(v);
    else {
      std::fprintf(stderr, "usage: gpu-moe-layer [--tokens T] [--hidden H] [--ffn I] [--experts E] [--topk K] "
                           "[--iters N] [--warmup N]\n");
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "gpu-moe-layer: every option takes a value\n");
    return 2;
  }
  int ngpu = 0;
  if (cudaGetDeviceCount(&ngpu) != cudaSuccess || ngpu == 0) {
    std::printf("ROW|moe_routing_fraction|skip: no GPU|\n");
    return 77;
  }
  try {
    auto be = make_backend<bf16>(Device::Cuda, 0);
    MemOps& mem = *be->mem;
    const cudaStream_t s = static_cast<cudaStream_t>(be->stream.handle);
    MoeConfig cfg;  // dropless, no jitter, no expert dropout
    const ExpertShardSpec shard{};
    Arena arena;
    MoeScratch<bf16> ms{};
    MoeLayer<bf16> layer(*be->moe, T, H, E, K, I, cfg, TopkNorm::Renormalize, shard, ms, arena);
    MoeScratch<bf16>::reserve(ms, arena, T, H, E, K, I, cfg, shard);
    Buffer<std::byte> block(mem, arena.bytes(), "gpu-moe-layer arena");
    arena.allocate_in(block.data());

    auto x = random_buffer<bf16>(mem, T * H, 1.0, 1, "x");
    auto dout = random_buffer<bf16>(mem, T * H, 1.0, 2, "dout");
    Buffer<bf16> out(mem, T * H, "out"), dx(mem, T * H, "dx");
    auto Wg = random_buffer<float>(mem, E * H, 1.0 / std::sqrt(double(H)), 3, "Wg");
    Buffer<float> dWg(mem, E * H, "dWg");
    // Experts stacked [w1; w3; w2] per expert, so gate and up run as one GEMM (moe_ops.h grouped_mlp_forward).
    auto W = random_buffer<bf16>(mem, E * 3 * I * H, 1.0 / std::sqrt(double(H)), 4, "experts");
    Buffer<float> dW(mem, E * 3 * I * H, "expert grads");
    ExpertWeights<bf16> w;
    ExpertGrads<bf16> g;
    for (i64 j = 0; j < E; ++j) {
      w.w1.push_back(W.data() + j * 3 * I * H);
      w.w3.push_back(W.data() + j * 3 * I * H + I * H);
      w.w2.push_back(W.data() + j * 3 * I * H + 2 * I * H);
      g.w1.push_back(dW.data() + j * 3 * I * H);
      g.w3.push_back(dW.data() + j * 3 * I * H + I * H);
      g.w2.push_back(dW.data() + j * 3 * I * H + 2 * I * H);
    }
    const std::vector<double> aux_dp(size_t(E), 0.0);
    const RngCtx rng{};

    auto layer_step = [&] {
      layer.forward(out.data(), x.data(), Wg.data(), w, nullptr, rng, Mode::Train);
      layer.backward(dx.data(), dout.data(), Wg.data(), w, dWg.data(), g, aux_dp.data(), 0.0);
    };
    const double t_layer = time_ms(layer_step, warmup, iters, s);

    // The expert part alone, on the routed counts of the last forward (dropless: every routed row is kept).
    const std::vector<i64> counts = layer.stats().routed;
    const std::vector<RowBlock> blocks = contiguous_blocks(counts);
    i64 R = 0;
    for (i64 c : counts) R += c;
    auto xe = random_buffer<bf16>(mem, R * H, 1.0, 5, "xe");
    auto dye = random_buffer<bf16>(mem, R * H, 1.0, 6, "dye");
    Buffer<bf16> ye(mem, R * H, "ye"), dxe(mem, R * H, "dxe");
    Buffer<bf16> a(mem, R * I, "a"), b(mem, R * I, "b"), h(mem, R * I, "hact"), dh(mem, R * I, "dh"),
        da(mem, R * I, "da"), db(mem, R * I, "db");
    ExpertMlpActs<bf16> acts{a.data(), b.data(), h.data()};
    const ExpertDropout nodrop{};
    auto experts_step = [&] {
      be->moe->grouped_mlp_forward(ye.data(), acts, xe.data(), blocks, nodrop, w, H, I);
      be->moe->grouped_mlp_backward(dxe.data(), g, dh.data(), da.data(), db.data(), dye.data(), acts, xe.data(), blocks,
                                    nodrop, w, H, I);
    };
    const double t_exp = time_ms(experts_step, warmup, iters, s);

    // Expert FLOPs of forward + backward: 3 GEMMs of 2·R·H·I forward, 6 backward.
    const double flops = 9.0 * 2.0 * double(R) * double(H) * double(I);
    const double frac = (t_layer - t_exp) / t_layer;
    std::printf("MoE layer T %lld, H %lld, I %lld, %lld experts top-%lld (dropless, %lld rows):\n", (long long)T,
                (long long)H, (long long)I, (long long)E, (long long)K, (long long)R);
    std::printf("  layer forward+backward %.3f ms | expert MLPs alone %.3f ms (%.1f TFLOP/s) | routing outside the "
                "expert GEMMs %.3f ms = %.1f%% of the layer\n",
                t_layer, t_exp, flops / (t_exp * 1e-3) / 1e12, t_layer - t_exp, 100 * frac);
    std::printf("ROW|moe_routing_fraction|pass|%.1f%% of the MoE layer fwd+bwd (layer %.2f ms, experts %.2f ms at "
                "%.0f TFLOP/s; T %lld, H %lld, I %lld, %lld experts top-%lld, dropless)\n",
                100 * frac, t_layer, t_exp, flops / (t_exp * 1e-3) / 1e12, (long long)T, (long long)H, (long long)I,
                (long long)E, (long long)K);
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    for (char& c : why) c = c == '|' ? '/' : c;
    std::printf("ROW|moe_routing_fraction|fail: %s|\n", why.c_str());
    return 1;
  }
  return 0;
}
