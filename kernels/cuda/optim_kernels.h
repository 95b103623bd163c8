// Owns the raw-pointer launchers of the CUDA optimizer kernels (kernels/cuda/adamw.cu); twins: src/optim/adamw.cpp.
#pragma once
#include <cstdint>

#include "core/bf16.h"
#include "core/dims.h"
#include "kernels/math/adamw.h"

typedef struct CUstream_st* cudaStream_t;

namespace moe {

// One work item of the multi-tensor AdamW launch: n ≤ kAdamWChunk elements of one piece (pointers already offset).
// The table of chunks lives in device memory; the caller builds it once per distinct piece list.
struct AdamWChunk {
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t n;
  int32_t decay;  // 1: AdamWStep::decay applies, 0: nodecay (1-D tensors)
  int32_t pad_ = 0;
};
constexpr i64 kAdamWChunk = 32768;

// AdamW over every chunk of the device table chunks[nchunks] in one launch (one block per chunk), each element by
// adamw_element with gradient scale gs. Bitwise equal to the CPU pass adamw_update_pieces. [C5.adamw]
void adamw_chunks_cuda(const AdamWChunk* chunks, i64 nchunks, const AdamWStep& c, float gs, cudaStream_t stream);

// Number of doubles of scratch grad_sq_sum_cuda needs for n elements: one partial per kSqBlock block, plus one.
inline i64 grad_sq_sum_scratch(i64 n) { return (n + kSqBlock - 1) / kSqBlock + 1; }
// *out (device) = Σ g[i]² in double in the reduction order of kernels/math/adamw.h (bitwise equal to the CPU
// grad_sq_sum): a partials kernel (one group of kSqLanes threads per block of kSqBlock elements) then one block
// adding the partials serially. scratch: grad_sq_sum_scratch(n) doubles of device memory; out may be scratch.
void grad_sq_sum_cuda(double* out, const float* g, i64 n, double* scratch, cudaStream_t stream);

// x[i] = scale_element(x[i], coef) for i < n. [C5.clip]
void scale_cuda(float* x, i64 n, float coef, cudaStream_t stream);
// dst[i] += src[i] for i < n (a unit's gradients into the kept ones; twin: CpuOptimOps::accumulate).
void accumulate_cuda(float* dst, const float* src, i64 n, cudaStream_t stream);
// dst[i] = bf16(src[i]) (round to nearest even, docs/DESIGN.md §8) for i < n.
void round_to_bf16_cuda(bf16* dst, const float* src, i64 n, cudaStream_t stream);

}  // namespace moe
