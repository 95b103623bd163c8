// Owns the model-FLOPs count per token, the known GPU peaks and the CPU's measured GEMM peak.
#include "train/model_flops.h"

#include <algorithm>
#include <chrono>
#include <vector>

namespace moe {

ModelFlops model_flops(const ModelConfig& m, const LoraSpec& lora, i64 seq_len) {
  const double H = m.hidden_size, D = m.resolved_head_dim(), NH = m.num_heads, NKV = m.num_kv_heads;
  const double E = m.num_experts, K = m.top_k, I = m.expert_width(), ID = m.intermediate_size, V = m.vocab_size;
  const double attn = H * NH * D * 2 + H * NKV * D * 2;  // q, o + k, v
  double n = H * V;                                      // lm_head
  double n_lora = 0;
  double router = 0;
  for (int l = 0; l < m.num_layers; ++l) {
    n += attn;
    if (m.is_moe_layer(l)) {
      n += H * E + K * 3 * H * I;
      router += H * E;
    } else {
      n += 3 * H * ID;
    }
  }
  ModelFlops f;
  f.active_params = n;
  const double attention_scores = 12.0 * m.num_layers * NH * D * double(seq_len);
  if (!lora.active()) {
    f.per_token = 6 * n + attention_scores;
    return f;
  }
  const double r = lora.r, rgu = lora.r_gate_up > 0 ? lora.r_gate_up : lora.r;
  double attn_lora = 0;
  if (lora.targets(LoraProj::Q)) attn_lora += r * (H + NH * D);
  if (lora.targets(LoraProj::K)) attn_lora += r * (H + NKV * D);
  if (lora.targets(LoraProj::V)) attn_lora += r * (H + NKV * D);
  if (lora.targets(LoraProj::O)) attn_lora += r * (NH * D + H);
  double expert_lora = 0;
  if (lora.gate_up_blocks() > 0) expert_lora += rgu * (H + lora.gate_up_blocks() * I);
  if (lora.targets(LoraProj::Down)) expert_lora += r * (I + H);
  for (int l = 0; l < m.num_layers; ++l) {
    n_lora += attn_lora;
    if (m.is_moe_layer(l)) n_lora += K * expert_lora;
  }
  f.lora_params = n_lora;
  f.per_token = 4 * n + 6 * n_lora + (lora.train_router ? 2 * router : 0.0) + attention_scores;
  return f;
}

double known_gpu_peak_tflops(const std::string& name, Precision p) {
  // Dense (no sparsity) datasheet peaks, SXM parts; PCIe/NVL parts of the same name differ by ~15-25%.
  struct Known {
    const char* key;
    double bf16, fp32;
  };
  static const Known kKnown[] = {
      {"H200", 989.4, 66.9}, {"H100", 989.4, 66.9}, {"GH200", 989.4, 66.9}, {"B200", 2250, 80},
      {"A100", 312, 19.5},   {"L40S", 362, 91.6},   {"A10", 125, 31.2},     {"L4", 121, 30.3},
  };
  for (const Known& k : kKnown)
    if (name.find(k.key) != std::string::npos) return p == Precision::Bf16 ? k.bf16 : k.fp32;
  return 0.0;
}

template <typename T>
double resolve_peak_tflops(const Config& cfg, Backend<T>& be, std::string* source) {
  if (cfg.train.peak_tflops > 0) {
    if (source) *source = "train.peak_tflops";
    return cfg.train.peak_tflops;
  }
  if (be.space != MemSpace::Host) {
    const double p = known_gpu_peak_tflops(be.device_name, cfg.train.precision);
    if (source) *source = p > 0 ? be.device_name + " datasheet" : "unknown GPU " + be.device_name;
    return p;
  }
  // CPU: the run's own GEMM (OpenBLAS sgemm for fp32, oneDNN for bf16) on N×N operands, best of a few.
  const i64 N = 768;
  Buffer<T> x(*be.mem, N * N, "peak GEMM x"), w(*be.mem, N * N, "peak GEMM w"), y(*be.mem, N * N, "peak GEMM y");
  Buffer<std::byte> ws(*be.mem, be.dense->linear_forward_workspace_bytes(N, N, N), "peak GEMM workspace");
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {  // rep 0 warms up
    const auto t0 = std::chrono::steady_clock::now();
    be.dense->linear_forward(y.data(), x.data(), w.data(), N, N, N, Accumulate::Overwrite, ws.data());
    be.mem->synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0 && s > 0) best = std::max(best, 2.0 * double(N) * N * N / s / 1e12);
  }
  if (source) *source = "measured GEMM on this CPU";
  return best;
}

template double resolve_peak_tflops<float>(const Config&, Backend<float>&, std::string*);
template double resolve_peak_tflops<bf16>(const Config&, Backend<bf16>&, std::string*);

}  // namespace moe
