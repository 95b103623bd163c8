// Owns the safetensors file format (8-byte LE header length, JSON header, raw LE data): strict mmap reader, dtype → fp32, atomic writer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dims.h"

namespace moe {

// One tensor of an open file; `data` points into the file's mapping (valid while the file lives).
struct TensorEntry {
  std::string name;
  std::string dtype;          // safetensors dtype string: "F32", "BF16", "F16", "F64", ...
  std::vector<i64> shape;     // [] for a 0-d tensor
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  i64 numel() const;
};

// A read-only, memory-mapped safetensors file whose header passed every check of the format.
// Every problem with the file throws moe::Error(BadInput) naming the file and what is wrong.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }  // header order (name-sorted)
  const TensorEntry* find(const std::string& name) const;               // nullptr when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void unmap();

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorEntry> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Bytes per element of a safetensors dtype (0 for the sub-byte F4/F6_*); BadInput for an unknown string.
size_t safetensors_dtype_size(const std::string& dtype);

// True for the dtypes convert_to_f32 accepts: F32, BF16, F16, F64.
bool convertible_to_f32(const std::string& dtype);

// dst [numel] fp32 ← t (little-endian). Other dtypes → BadInput naming the tensor and its dtype.
void convert_to_f32(const TensorEntry& t, float* dst);

// A view of elements [first, first+count) of t's flat data (for slicing fused expert tensors).
TensorEntry slice_elements(const TensorEntry& t, i64 first, i64 count);

// fp32 → bf16 bits with round-to-nearest-even (NaN stays a quiet NaN), and back.
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t b);

enum class StDtype { F32, BF16 };

struct TensorToWrite {
  std::string name;
  std::vector<i64> shape;
  const float* data = nullptr;   // [numel] fp32
  StDtype out_dtype = StDtype::F32;
};

// Writes a safetensors file: header padded with spaces to a multiple of 8, tensors sorted by dtype size
// (descending) then name so each is naturally aligned, `__metadata__` = {"format": "pt"} + `metadata`.
// Writes path + ".tmp", then renames onto path (never leaves a half-written file at path).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace moe
