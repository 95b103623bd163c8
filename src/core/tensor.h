// Owns the tensor vocabulary shared by every layer: element dtypes, memory spaces and a non-owning tensor view.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/bf16.h"
#include "core/dims.h"
#include "core/error.h"

namespace moe {

// Element types. NF4 is a storage kind of 4-bit codes (two per byte) with per-block absmax (QLoRA); its
// "element size" is given in bits by dtype_bits.
enum class DType : uint8_t { F32, F64, BF16, I32, I64, U8, NF4 };
// Where a buffer lives (its memory space). Host = pageable CPU memory; Cuda = device memory of the current GPU.
enum class MemSpace : uint8_t { Host, Cuda };

inline int dtype_bits(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 32;
    case DType::F64: case DType::I64: return 64;
    case DType::BF16: return 16;
    case DType::U8: return 8;
    case DType::NF4: return 4;
  }
  return 0;
}
// Bytes of n elements (rounded up for sub-byte types).
inline i64 dtype_bytes(DType t, i64 n) { return (n * dtype_bits(t) + 7) / 8; }
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::NF4: return "nf4";
  }
  return "?";
}

// The DType of a C++ storage type.
template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<bf16>() { return DType::BF16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

// A non-owning view: pointer, dtype, shape (row-major, at most 4 dims) and memory space.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  MemSpace space = MemSpace::Host;
  int ndim = 0;
  std::array<i64, 4> shape{};

  TensorView() = default;
  TensorView(void* p, DType t, std::initializer_list<i64> dims, MemSpace sp = MemSpace::Host)
      : data(p), dtype(t), space(sp), ndim(int(dims.size())) {
    MT_CHECK(dims.size() <= 4, "tensor views have at most 4 dims");
    int i = 0;
    for (i64 d : dims) shape[i++] = d;
  }
  template <typename T>
  static TensorView of(T* p, std::initializer_list<i64> dims, MemSpace sp = MemSpace::Host) {
    return TensorView(const_cast<std::remove_const_t<T>*>(p), dtype_of<std::remove_const_t<T>>(), dims, sp);
  }
  i64 numel() const {
    i64 n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  i64 bytes() const { return dtype_bytes(dtype, numel()); }
  // Typed pointer; MT_CHECK that the dtype matches.
  template <typename T>
  T* as() const {
    MT_CHECK(dtype == dtype_of<std::remove_const_t<T>>(), "tensor of ", dtype_name(dtype), " read as ",
             dtype_name(dtype_of<std::remove_const_t<T>>()));
    return static_cast<T*>(data);
  }
};

}  // namespace moe
