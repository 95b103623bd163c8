// Owns the optimizer group of the backend op table: AdamW over shard pieces, Σg² for the global norm, gradient scaling and accumulation, and the bf16 compute-copy rounding.
#pragma once
#include <memory>
#include <vector>

#include "core/bf16.h"
#include "core/dims.h"
#include "optim/adamw.h"

namespace moe {

// Ops over fp32 state buffers in the backend's memory space (master weights, gradients, moments), ordered on
// the backend's stream. ParamState calls these for every element-wise pass over its shards.
class OptimOps {
 public:
  virtual ~OptimOps() = default;
  // One AdamW update of every piece (torch.optim.AdamW semantics), each gradient read × grad_scale. [C5.adamw]
  virtual void adamw(const std::vector<AdamWPiece>& pieces, const AdamWHyper& hp, long t, float grad_scale) = 0;
  // Σ g[i]² over n elements, accumulated in double (shards are combined before the sqrt). [C5.clip]
  virtual double grad_sq_sum(const float* g, i64 n) = 0;
  // x[i] *= coef (the clipping coefficient). [C5.clip]
  virtual void scale(float* x, i64 n, float coef) = 0;
  // dst[i] = round_bf16(src[i]): the compute copy of the fp32 master (docs/DESIGN.md §8).
  virtual void round_to_bf16(bf16* dst, const float* src, i64 n) = 0;
  // dst[i] += src[i] (fp32; dst and src do not overlap): unit gradients summed into the kept gradients.
  virtual void accumulate(float* dst, const float* src, i64 n) = 0;
  // Plans the table's own scratch once, before step 0: adamw over `pieces` (the list the caller will pass every
  // step) and grad_sq_sum over at most max_sq_n elements then allocate nothing. The CPU table needs none.
  virtual void reserve(const std::vector<AdamWPiece>& pieces, i64 max_sq_n) {
    (void)pieces;
    (void)max_sq_n;
  }
};

// The CPU table: optim/adamw.cpp's OpenMP passes.
std::unique_ptr<OptimOps> make_cpu_optim_ops();

}  // namespace moe
