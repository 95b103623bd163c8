// Owns the CUDA quant table (CudaQuantOps<T>, T = float or bf16): NF4 dequantization queued on the backend's stream.
#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"
#include "backend/quant_ops.h"
#include "kernels/cuda/quant_kernels.h"

namespace moe {
namespace {

// Contract: backend/quant_ops.h; bitwise the CPU table (the same kernels/math/nf4.h arithmetic, tables copied from
// the host ones into constant memory at construction).
template <typename T>
class CudaQuantOps final : public QuantOps<T> {
 public:
  explicit CudaQuantOps(CudaContext& ctx) : ctx_(ctx) {
    MT_CUDA(cudaSetDevice(ctx_.device));
    nf4_tables_to_device();
  }
  void nf4_dequantize(T* out, const Nf4View& q) override { nf4_dequantize_cuda<T>(out, q, ctx_.stream); }

 private:
  CudaContext& ctx_;
};

}  // namespace

template <typename T>
std::unique_ptr<QuantOps<T>> make_cuda_quant_ops(CudaContext& ctx) {
  return std::make_unique<CudaQuantOps<T>>(ctx);
}
template std::unique_ptr<QuantOps<float>> make_cuda_quant_ops<float>(CudaContext&);
template std::unique_ptr<QuantOps<bf16>> make_cuda_quant_ops<bf16>(CudaContext&);

}  // namespace moe
