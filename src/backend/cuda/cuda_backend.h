// Owns the factories of the CUDA backend (no CUDA header here: the registry and tests include it from plain C++).
#pragma once
#include <memory>

#include "backend/backend.h"

namespace moe {

// The CUDA backend on GPU `gpu` (cudaSetDevice): one stream, cuBLASLt for GEMMs, CUDA kernels for the rest,
// device memory for every buffer. T = bf16 (DESIGN §8: bf16 storage, fp32 accumulation, fp32 master state in
// ParamState) or float. Throws BadInput when the machine has no usable GPU `gpu`.
template <typename T>
std::unique_ptr<Backend<T>> make_cuda_backend(int gpu);

// How many GPUs the CUDA runtime sees (0 when there is no driver or no device; never throws).
int cuda_device_count();

}  // namespace moe
