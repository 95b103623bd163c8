// Owns cuDNN's fused flash attention (SDPA) for the CUDA dense table: per shape a forward and a backward graph built
// once, run on the backend's stream with the caller's workspace. No cuDNN type here: only cudnn_sdpa.cpp sees cuDNN.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "backend/cuda/sdpa_plan.h"
#include "core/bf16.h"

namespace moe {

struct CudaContext;

// Contract: DenseOps::attention_forward / attention_backward (backend/dense_ops.h) for T = bf16 — causal,
// optionally sliding-window GQA attention with scale 1/√D; lse = natural-log log-sum-exp of the scaled scores, which
// is cuDNN's softmax statistics tensor (Stats = max + log Σ exp(s − max) in the frontend's softmax; base 2 only when
// asked with stats_use_log2, which we do not). The hand-written kernels (kernels/cuda/attention.cu) are the fallback:
// a shape cuDNN refuses, a build without the cuDNN frontend headers, or no libcudnn.so.9 at run time (found by the
// loader, or named by the environment variable MOE_CUDNN_LIBRARY=/path/libcudnn.so.9). MOE_CUDNN_ATTENTION=off
// sends every shape to the hand kernel (for comparing the two on a GPU).
// Rounding (DESIGN §8 "bf16"): scores, softmax and lse in fp32 and out rounded once, as on the CPU, but the flash
// forward rounds the UNNORMALIZED exp(s − running max) to bf16 for P·V and divides by the row sum afterwards, where
// the twins round the normalized P. cuDNN's backward, like every flash backward on tensor cores, also feeds P and
// dS = P∘(dP − D) to its dV/dQ/dK GEMMs in bf16, where the CPU twin keeps them fp32. Both leave ~2⁻⁹ relative noise
// per summed term (~5e-3 of a row's norm): tests/gpu/test_attention_cudnn_gpu.cu compares out, dq, dk, dv per row in
// L2, not elementwise or bitwise.
class CudnnSdpa {
 public:
  // Whether cuDNN is to be used for a shape, per direction, and the scratch it needs.
  struct Plan {
    bool fwd = false, bwd = false;  // cuDNN runs this direction (else the hand kernel)
    i64 ws_bytes = 0;               // workspace of the larger of the two cuDNN graphs
    std::string why;                // why a direction is not on cuDNN ("" when both are)
  };

  explicit CudnnSdpa(CudaContext& ctx);
  ~CudnnSdpa();
  CudnnSdpa(const CudnnSdpa&) = delete;
  CudnnSdpa& operator=(const CudnnSdpa&) = delete;

  // Whether this build has the cuDNN path (CMake found cudnn.h and the cuDNN frontend headers: MOE_HAVE_CUDNN).
  static bool compiled();

  // The plan of shape s: built on the first call for s (cuDNN graphs, heuristics mode A, deterministic backward),
  // with one info line saying which path attention takes; later calls look it up. Never throws for cuDNN's sake:
  // any cuDNN failure while building is a reason to take the hand kernel.
  const Plan& prepare(const SdpaShape& s, SdpaElem e);

  // Queue the forward (out, lse) / the backward (dq, dk, dv overwritten) of a shape whose plan has fwd / bwd set,
  // with ws of at least plan.ws_bytes. Returns false and queues nothing when a tensor pointer is not 16-byte
  // aligned (the caller runs the hand kernel; a warning is logged once). An error of cuDNN while running is an
  // Internal error (MT_CHECK).
  bool forward(const SdpaShape& s, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, void* ws);
  bool backward(const SdpaShape& s, bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                const bf16* q, const bf16* k, const bf16* v, void* ws);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
