// Owns the CUDA dense op table (placeholder until the CUDA dense ops land: refuses with a clear message).
#include "backend/cuda/cuda_context.h"
#include "core/error.h"

namespace moe {
template <typename T>
std::unique_ptr<DenseOps<T>> make_cuda_dense_ops(CudaContext&) {
  MT_INPUT_FAIL("train.device: cuda: the CUDA dense ops are not built yet");
}
template std::unique_ptr<DenseOps<float>> make_cuda_dense_ops<float>(CudaContext&);
template std::unique_ptr<DenseOps<bf16>> make_cuda_dense_ops<bf16>(CudaContext&);
}  // namespace moe
