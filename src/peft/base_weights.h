// Owns BaseWeights<T>: the frozen base linears of LoRA/QLoRA (the base table) in a backend's memory, dense T or NF4,
// and their per-unit T view (NF4: dequantized into one slot).
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "backend/mem_ops.h"
#include "backend/quant_ops.h"
#include "core/dims.h"
#include "core/tensor.h"
#include "model/param_table.h"
#include "peft/nf4.h"

namespace moe {

// How the base is stored. Dense: T values (LoRA). Nf4: each entry quantized on its own by nf4_quantize (block 64,
// double quant per Nf4DoubleQuant; QLoRA), bit-identical to bitsandbytes' codes and statistics.
enum class BaseStorage : uint8_t { Dense, Nf4 };

// The base table's weights (docs/ISSUE11: units as the model table, entries dense fp32 shapes; padding elements, if
// any, are zeros), T = float, double or bf16. Allocates all its backend memory in the constructor.
template <typename T>
class BaseWeights {
 public:
  // quant: the backend's quant table (must run on mem's memory); null = the CPU default (mem must be host memory).
  BaseWeights(const ParamTable& base, BaseStorage kind, Nf4DoubleQuant dq, MemOps& mem, QuantOps<T>* quant);
  BaseWeights(const BaseWeights&) = delete;
  BaseWeights& operator=(const BaseWeights&) = delete;

  // Stores unit `unit` from host fp32 values in base-table layout relative to the unit's begin
  // ([units()[unit].size()] elements). Dense: rounded to T once (bf16: nearest-even). Nf4: each entry quantized
  // (n ≥ 1) and uploaded. Synchronous (values may be reused on return); invalidates the slot if it holds this unit.
  void set_unit(int unit, const float* values);
  // The unit's weights as T in base-table layout: pointer = unit base; tensor e at base + e.offset − unit.begin.
  // Dense: the stored values. Nf4: dequantized (QuantOps::nf4_dequantize, queued on the backend's stream) into one
  // slot sized to the largest unit; valid until unit() is called for another unit (or set_unit for this one). No
  // allocation. A unit with no elements: any pointer (not to be read).
  const T* unit(int unit);

  // Bytes of the stored base. Dense: total elements · sizeof(T). Nf4: Σ over entries of codes + absmax (fp32), or
  // qabsmax (u8) + absmax2 (fp32) + offset (fp32) with double quant (= Σ Nf4Tensor::bytes()).
  i64 stored_bytes() const { return stored_bytes_; }
  // Bytes of the dequantization slot (0 for Dense).
  i64 slot_bytes() const { return slot_bytes_; }
  // Base parameters (Σ entry sizes, no padding).
  i64 numel() const { return table_.tensor_numel(); }
  const std::vector<ParamUnit>& units() const { return table_.units(); }
  const ParamTable& table() const { return table_; }
  BaseStorage kind() const { return kind_; }

  // The backend memory a BaseWeights of this table, storage and T (F32, F64 or BF16) holds: stored_bytes() +
  // slot_bytes() (the memory plan; alignment of its few buffers aside).
  static i64 plan_bytes(const ParamTable& base, BaseStorage kind, Nf4DoubleQuant dq, DType t);

 private:
  // Where one NF4 entry lives in the shared buffers.
  struct Nf4Entry {
    i64 rel = 0;         // element offset in its unit (offset − unit.begin)
    i64 n = 0;
    i64 code_off = 0;    // byte offset into codes_
    i64 block_off = 0;   // first NF4 block: index into absmax_ / qabsmax_
    i64 block2_off = 0;  // first 256-block of the double quant: index into absmax2_
    float offset = 0.0f; // double quant offset (host value, passed by value to the op)
  };

  ParamTable table_;
  BaseStorage kind_;
  Nf4DoubleQuant dq_;
  MemOps& mem_;
  std::unique_ptr<QuantOps<T>> own_quant_;  // the CPU default when none was given
  QuantOps<T>* quant_ = nullptr;
  i64 stored_bytes_ = 0, slot_bytes_ = 0;
  Buffer<T> dense_;                               // Dense: total_numel() values
  Buffer<uint8_t> codes_, qabsmax_;               // Nf4
  Buffer<float> absmax_, absmax2_;                // Nf4
  Buffer<T> slot_;                                // Nf4: largest unit
  std::vector<std::vector<Nf4Entry>> entries_;    // Nf4: per unit
  std::vector<std::vector<std::pair<i64, i64>>> gaps_;  // Nf4: per unit, [lo, hi) elements no entry covers
  int slot_unit_ = -1;                            // the unit now in slot_ (−1: none)
};

}  // namespace moe
