// Owns the one-allocation arena: buffers are reserved by size, then allocated once before step 0 (STYLE habit 4).
#pragma once
#include <string>
#include <vector>

#include "core/dims.h"
#include "core/error.h"

namespace moe {

// PlanOnly sizes everything but allocates nothing (--dry-run on shapes that do not fit this machine).
enum class AllocPolicy { Allocate, PlanOnly };

template <typename T>
class Arena {
 public:
  explicit Arena(AllocPolicy policy = AllocPolicy::Allocate) : policy_(policy) {}
  bool allocated() const { return allocated_ && policy_ == AllocPolicy::Allocate; }
  bool plan_only() const { return policy_ == AllocPolicy::PlanOnly; }
  // Records that *slot must point to n elements once allocate() runs.
  void reserve(T** slot, i64 n) {
    MT_CHECK(!allocated_, "reserve after allocate");
    slots_.push_back({slot, n});
    total_ += n;
  }
  void allocate() {
    MT_CHECK(!allocated_, "arena allocated twice");
    allocated_ = true;
    if (policy_ == AllocPolicy::PlanOnly) return;
    buf_.assign(size_t(total_), T(0));
    i64 off = 0;
    for (auto& s : slots_) {
      *s.slot = buf_.data() + off;
      off += s.n;
    }
  }
  i64 elements() const { return total_; }
  i64 bytes() const { return total_ * i64(sizeof(T)); }

 private:
  struct Slot {
    T** slot;
    i64 n;
  };
  std::vector<Slot> slots_;
  std::vector<T> buf_;
  i64 total_ = 0;
  bool allocated_ = false;
  AllocPolicy policy_;
};

}  // namespace moe
