// Owns make_backend: the backend table of train.device (the CPU table, or the CUDA one where this build has it).
#include "backend/backend.h"
#include "core/error.h"

#include <cstdlib>
#include <string>
#include <type_traits>
#ifdef MOE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace moe {

std::string backend_unavailable(Device device) {
#ifdef MOE_HAVE_CUDA
  (void)device;
  return "";
#else
  if (device == Device::Cpu) return "";
  return "train.device: cuda: this moe-train was built without CUDA (nvcc was not found when CMake configured the "
         "build); rebuild on a machine with the CUDA toolkit, or use train.device: cpu";
#endif
}

AttentionPath cudnn_attention_setting() {
  const char* a = std::getenv("MOE_CUDNN_ATTENTION");
  const std::string v = a ? a : "";
  if (v.empty() || v == "on") return AttentionPath::Cudnn;
  if (v == "off") return AttentionPath::Kernels;
  MT_INPUT_FAIL("MOE_CUDNN_ATTENTION='", v, "': expected on (the default: cuDNN fused attention where cuDNN loads and "
                "takes the shape) or off (the hand-written attention kernels)");
}

template <typename T>
std::unique_ptr<Backend<T>> make_backend(Device device, int gpu) {
  if (device == Device::Cpu) return make_cpu_backend<T>();
#ifdef MOE_HAVE_CUDA
  if constexpr (std::is_same<T, double>::value) {
    MT_INPUT_FAIL("train.device: cuda trains in fp32 or bf16 (train.precision); fp64 is a CPU-only test type");
  } else {
    return make_cuda_backend<T>(gpu);
  }
#else
  (void)gpu;
  MT_INPUT_FAIL(backend_unavailable(device));
#endif
}

template std::unique_ptr<Backend<float>> make_backend<float>(Device, int);
template std::unique_ptr<Backend<double>> make_backend<double>(Device, int);
template std::unique_ptr<Backend<bf16>> make_backend<bf16>(Device, int);

}  // namespace moe
