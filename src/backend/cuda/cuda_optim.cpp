// Owns the CUDA optimizer op table (placeholder until the CUDA optimizer ops land: refuses with a clear message).
#include "backend/cuda/cuda_context.h"
#include "core/error.h"

namespace moe {
std::unique_ptr<OptimOps> make_cuda_optim_ops(CudaContext&) {
  MT_INPUT_FAIL("train.device: cuda: the CUDA optimizer ops are not built yet");
}
}  // namespace moe
