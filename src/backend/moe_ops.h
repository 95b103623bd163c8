// Owns the MoE half of the backend op table: router softmax/top-k, routing plan, permute/unpermute, combine, grouped expert linears.
#pragma once
#include "core/bf16.h"
#include "core/dims.h"

namespace moe {

// Filled by the MoE dispatch work (router, plan, permute/unpermute, combine, grouped GEMM); today MoeLayer
// still calls the CPU functions of src/moe directly.
template <typename T>
class MoeOps {
 public:
  using A = acc_t<T>;
  virtual ~MoeOps() = default;
};

}  // namespace moe
