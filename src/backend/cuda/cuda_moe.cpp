// Owns the CUDA MoE op table (placeholder until the CUDA MoE ops land: refuses with a clear message).
#include "backend/cuda/cuda_context.h"
#include "core/error.h"

namespace moe {
template <typename T>
std::unique_ptr<MoeOps<T>> make_cuda_moe_ops(CudaContext&) {
  MT_INPUT_FAIL("train.device: cuda: the CUDA MoE ops are not built yet");
}
template std::unique_ptr<MoeOps<float>> make_cuda_moe_ops<float>(CudaContext&);
template std::unique_ptr<MoeOps<bf16>> make_cuda_moe_ops<bf16>(CudaContext&);
}  // namespace moe
