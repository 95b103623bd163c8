// Owns the one-allocation arena: typed buffers are reserved by size, then allocated once before step 0 (STYLE habit 4).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/dims.h"
#include "core/error.h"
#include "core/tensor.h"

namespace moe {

// PlanOnly sizes everything but allocates nothing (--dry-run on shapes that do not fit this machine).
enum class AllocPolicy { Allocate, PlanOnly };

// Buffers of any element type in one block. Each reservation starts on a 64-byte boundary, so the byte size
// of a plan is exactly Σ round_up(bytes, 64): the same number whether it is allocated or only planned.
// allocate() takes host memory; a device backend allocates bytes() itself and hands the block to allocate_in().
class Arena {
 public:
  static constexpr i64 kAlign = 64;
  // Plans past 2^62 bytes (or element counts that overflowed before reaching reserve) saturate here: more than
  // any machine holds, small enough that a memory plan can add a few of them without overflowing.
  static constexpr i64 kSaturated = i64(1) << 62;
  explicit Arena(AllocPolicy policy = AllocPolicy::Allocate) : policy_(policy) {}
  bool allocated() const { return allocated_ && policy_ == AllocPolicy::Allocate; }
  bool plan_only() const { return policy_ == AllocPolicy::PlanOnly; }

  // Records that *slot must point to n elements of U once allocate() runs.
  template <typename U>
  void reserve(U** slot, i64 n) {
    MT_CHECK(!allocated_, "reserve after allocate");
    slots_.push_back({reinterpret_cast<void**>(slot), total_});
    if (n < 0 || n > (kSaturated - total_) / i64(sizeof(U))) {
      total_ = kSaturated;
      return;
    }
    total_ = std::min(kSaturated, total_ + (n * i64(sizeof(U)) + kAlign - 1) / kAlign * kAlign);
  }
  // Allocates the block on the host (zero-filled) and points every slot into it.
  void allocate() {
    MT_CHECK(!allocated_, "arena allocated twice");
    allocated_ = true;
    if (policy_ == AllocPolicy::PlanOnly) return;
    MT_INPUT_CHECK(total_ < kSaturated, "the activation plan exceeds 2^62 bytes: train.micro_batch x train.seq_len "
                   "(or the model size) is far beyond any machine");
    if (total_ > 0) {
      host_.reset(static_cast<std::byte*>(std::aligned_alloc(size_t(kAlign), size_t(total_))));
      MT_CHECK(host_, "cannot allocate ", total_, " bytes of activations");
      std::memset(host_.get(), 0, size_t(total_));
    }
    place(host_.get());
  }
  // Points every slot into an external block of at least bytes() bytes (e.g. device memory), aligned to kAlign.
  void allocate_in(void* block) {
    MT_CHECK(!allocated_, "arena allocated twice");
    MT_CHECK(reinterpret_cast<uintptr_t>(block) % kAlign == 0, "arena block not aligned to ", kAlign, " bytes");
    MT_CHECK(total_ < kSaturated, "arena plan saturated (more than 2^62 bytes)");
    allocated_ = true;
    if (policy_ == AllocPolicy::PlanOnly) return;
    place(static_cast<std::byte*>(block));
  }
  i64 bytes() const { return total_; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  struct Slot {
    void** slot;
    i64 offset;  // bytes
  };
  void place(std::byte* base) {
    for (auto& s : slots_) *s.slot = base ? base + s.offset : nullptr;
  }
  std::vector<Slot> slots_;
  std::unique_ptr<std::byte, Free> host_;
  i64 total_ = 0;
  bool allocated_ = false;
  AllocPolicy policy_;
};

}  // namespace moe
