// Owns the memory group of the backend op table: allocation in the backend's memory space, host<->backend copies, stream sync, and an owning buffer.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>

#include "core/dims.h"
#include "core/tensor.h"

namespace moe {

// Memory of one backend (host for the CPU, device memory of the current GPU for CUDA). Allocation happens
// before step 0 only (model arena, ParamState buffers, op workspaces); the step loop copies and never allocates.
// Copies are ordered on the backend's stream after every op queued before them.
class MemOps {
 public:
  virtual ~MemOps() = default;
  virtual MemSpace space() const = 0;
  // bytes (≥ 0) zero-filled, aligned to 256 bytes; null for 0 bytes. Throws BadInput naming `what` and the
  // byte count when the space cannot hold it (the memory plan should have refused first).
  virtual void* alloc(i64 bytes, const char* what) = 0;
  virtual void free(void* p) = 0;
  // dst (host) ← src (backend space). Returns when the bytes are in dst (a device backend synchronizes).
  virtual void to_host(void* dst, const void* src, i64 bytes) = 0;
  // dst (backend space) ← src (host). src may be reused as soon as this returns.
  virtual void to_backend(void* dst, const void* src, i64 bytes) = 0;
  // dst ← src, both in the backend space (may overlap only when equal).
  virtual void copy(void* dst, const void* src, i64 bytes) = 0;
  virtual void zero(void* dst, i64 bytes) = 0;
  // Waits until every op queued so far has finished (CPU: nothing to wait for).
  virtual void synchronize() = 0;
};

// n elements of U in a backend's memory space, freed with it (move-only).
template <typename U>
class Buffer {
 public:
  Buffer() = default;
  Buffer(MemOps& mem, i64 n, const char* what) : mem_(&mem), n_(n) {
    p_ = static_cast<U*>(mem.alloc(n * i64(sizeof(U)), what));
  }
  Buffer(Buffer&& o) noexcept : mem_(o.mem_), p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      mem_ = o.mem_;
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }
  void reset() {
    if (p_ && mem_) mem_->free(p_);
    p_ = nullptr;
    n_ = 0;
  }
  U* data() { return p_; }
  const U* data() const { return p_; }
  i64 size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  MemOps* mem_ = nullptr;
  U* p_ = nullptr;
  i64 n_ = 0;
};

// The host table: aligned_alloc + memset, memcpy.
std::unique_ptr<MemOps> make_cpu_mem_ops();

}  // namespace moe
