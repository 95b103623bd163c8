// Owns the raw-pointer launchers of the quantized-weight CUDA kernels (kernels/cuda/nf4.cu); twin: CpuQuantOps.
#pragma once
#include "core/bf16.h"
#include "kernels/math/nf4.h"

typedef struct CUstream_st* cudaStream_t;

namespace moe {

// Copies nf4_code() and dynamic_map_signed() into the kernels' constant memory of the current GPU (once per
// process and device is enough; idempotent, synchronous).
void nf4_tables_to_device();
// out[q.n] = nf4 value of each element (math::nf4_value) as T; one thread per code byte (two elements). Needs
// nf4_tables_to_device() first. Returns at once for q.n = 0. T = float or bf16.
template <typename T>
void nf4_dequantize_cuda(T* out, const Nf4View& q, cudaStream_t s);

}  // namespace moe
