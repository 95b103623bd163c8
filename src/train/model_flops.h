// Owns the model-FLOPs accounting behind model_tflops and MFU in metrics.jsonl: FLOPs per trained token and the peak
// rate of one device.
#pragma once
#include <string>

#include "backend/backend.h"
#include "config/config.h"
#include "peft/lora.h"

namespace moe {

// Model FLOPs of one trained token (forward + backward), the PaLM convention (Chowdhery et al. 2022, appendix B):
//   full fine-tuning: 6·N_active + 12·n_layers·n_heads·head_dim·seq_len
//   LoRA / QLoRA:     4·N_active + 6·N_lora + 12·n_layers·n_heads·head_dim·seq_len
//     (frozen base linears: forward 2N + input gradients 2N, no weight gradients; adapters train in full)
// N_active = weights of the matmuls one token passes through: q/k/v/o, the router [E,H], top_k of the num_experts
// SwiGLU experts (3·H·I each), the dense MLPs of dense layers, lm_head [V,H]; not the embedding lookup nor norms.
// N_lora = the adapters on that path (attention targets; expert targets of top_k experts). A trainable router under
// LoRA adds its weight-gradient 2·H·E. Recomputation (train.recompute) is not counted: these are model FLOPs, not
// hardware FLOPs. Capacity dropping is not subtracted (every token is counted at top_k experts).
struct ModelFlops {
  double per_token = 0;     // FLOPs per trained token, fwd + bwd
  double active_params = 0; // N_active
  double lora_params = 0;   // N_lora (0 for full fine-tuning)
};
ModelFlops model_flops(const ModelConfig& m, const LoraSpec& lora, i64 seq_len);

// Datasheet dense peak TFLOP/s of a known GPU at `precision` (bf16: tensor-core bf16; fp32: CUDA-core fp32, no
// TF32), matched on the driver's device name (H100, H200, A100, L40S, ...); 0 when the GPU is not known.
double known_gpu_peak_tflops(const std::string& device_name, Precision precision);

// The peak the MFU divides by: train.peak_tflops when given (> 0); else known_gpu_peak_tflops for a GPU, or on the
// CPU a GEMM measured now through the backend's own linear op (N×N×N, best of a few, this process's threads).
// 0 when nothing applies (an unknown GPU without train.peak_tflops: MFU is then not reported). `source` says which.
template <typename T>
double resolve_peak_tflops(const Config& cfg, Backend<T>& be, std::string* source);

}  // namespace moe
