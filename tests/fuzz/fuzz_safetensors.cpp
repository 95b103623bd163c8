// Fuzz harness: any bytes as a safetensors file (header + data) → SafetensorsFile::open, then every tensor read as fp32.
#include <vector>

#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = moe::fuzz::write_scratch("model.safetensors", data, size);
  return moe::fuzz::guarded([&] {
    const moe::SafetensorsFile f = moe::SafetensorsFile::open(path);
    for (const auto& [k, v] : f.metadata()) (void)(k.size() + v.size());
    std::vector<float> out;
    for (const moe::TensorEntry& t : f.tensors()) {
      if (f.find(t.name) != &t) std::abort();  // the index must find every tensor under its own name
      if (!moe::convertible_to_f32(t.dtype)) continue;
      out.assign(size_t(t.numel()), 0.f);
      moe::convert_to_f32(t, out.data());
      if (t.numel() >= 2) {  // the loader's slicing of fused expert tensors
        const moe::TensorEntry half = moe::slice_elements(t, t.numel() / 2, t.numel() - t.numel() / 2);
        moe::convert_to_f32(half, out.data());
      }
    }
  });
}
