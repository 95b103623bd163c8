// Owns the backend table: one object per (device, storage type) that the model, the MoE layer and the optimizer call for every op.
#pragma once
#include <memory>
#include <string>

#include "backend/dense_ops.h"
#include "backend/mem_ops.h"
#include "backend/moe_ops.h"
#include "backend/optim_ops.h"
#include "backend/quant_ops.h"
#include "core/tensor.h"

namespace moe {

// Where ops are ordered. The CPU runs every op synchronously in call order (handle = null); the CUDA backend
// puts its cudaStream_t here. Ops never synchronize the host except where an op's comment says so.
struct Stream {
  void* handle = nullptr;
};

// A backend is a table of op groups (like ggml's backend interface): a CPU default, a CUDA one beside it.
// T is the storage type of activations and weight copies: float (fp32 training), double (gradient checks),
// bf16 (mixed precision: fp32 master weights, moments and statistics live elsewhere, see DenseOps).
// What a backend's op tables share (a device backend: its stream, library handles, the GPU). Declared first in
// Backend so it is destroyed after the tables that use it.
struct BackendContext {
  virtual ~BackendContext() = default;
};

template <typename T>
struct Backend {
  std::unique_ptr<BackendContext> context;  // null on the CPU
  MemSpace space = MemSpace::Host;
  std::string device_name = "cpu";  // "cpu", or the GPU's name as the driver reports it (e.g. "NVIDIA H200")
  Stream stream;
  std::unique_ptr<MemOps> mem;  // allocation and copies in `space`
  std::unique_ptr<DenseOps<T>> dense;
  std::unique_ptr<MoeOps<T>> moe;
  std::unique_ptr<OptimOps> optim;  // fp32 state passes (ParamState); independent of T
  std::unique_ptr<QuantOps<T>> quant;  // quantized base weights (QLoRA NF4) → T
};

// The CPU backend: OpenBLAS for fp32/fp64 GEMMs, oneDNN's bf16 GEMM (AVX512-BF16 dot products where the CPU has
// them) for bf16, OpenMP loops for the rest.
template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend();

// The backend of train.device (backend_registry.cpp): Cpu → make_cpu_backend; Cuda → the CUDA backend on GPU
// `gpu` (T = float or bf16), or BadInput when this build has no CUDA or the machine no GPU.
template <typename T>
std::unique_ptr<Backend<T>> make_backend(Device device, int gpu = 0);
// Why this build cannot train on `device` (the BadInput message make_backend raises); "" when it can.
std::string backend_unavailable(Device device);

// Which attention the CUDA backend runs for bf16: MOE_CUDNN_ATTENTION unset, empty or "on" = cuDNN's fused attention
// where cuDNN loads and takes the shape; "off" = the hand-written kernels. BadInput (exit 2) naming the variable for
// any other value (preflight checks it before a run).
enum class AttentionPath { Cudnn, Kernels };
AttentionPath cudnn_attention_setting();

}  // namespace moe
