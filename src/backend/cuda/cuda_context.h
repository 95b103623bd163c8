// Owns what the CUDA op tables of one backend share: the GPU, its stream, the cuBLASLt handle and workspace.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/optim_ops.h"

namespace moe {

struct CudaContext final : BackendContext {
  int device = 0;
  std::string name;             // e.g. "NVIDIA H200"
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  cudaStream_t stream = nullptr;  // every op and copy of the backend is queued here
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;  // grouped GEMMs (cublasGemmGroupedBatchedEx)
  void* lt_workspace = nullptr;   // cuBLASLt workspace, planned once
  size_t lt_workspace_bytes = 0;
  // Makes `gpu` current, creates the stream and handles. BadInput when the GPU does not exist.
  explicit CudaContext(int gpu);
  ~CudaContext() override;
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
};

// The op tables of the CUDA backend; each keeps a reference to ctx (which outlives them, see Backend).
std::unique_ptr<MemOps> make_cuda_mem_ops(CudaContext& ctx);
template <typename T>
std::unique_ptr<DenseOps<T>> make_cuda_dense_ops(CudaContext& ctx);
template <typename T>
std::unique_ptr<MoeOps<T>> make_cuda_moe_ops(CudaContext& ctx);
std::unique_ptr<OptimOps> make_cuda_optim_ops(CudaContext& ctx);
template <typename T>
std::unique_ptr<QuantOps<T>> make_cuda_quant_ops(CudaContext& ctx);

}  // namespace moe
