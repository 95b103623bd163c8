// Owns the host MemOps: aligned, zero-filled allocations and memcpy copies (the CPU backend's memory group).
#include <cstdlib>
#include <cstring>

#include "backend/mem_ops.h"
#include "core/error.h"

namespace moe {

namespace {
class CpuMemOps final : public MemOps {
 public:
  MemSpace space() const override { return MemSpace::Host; }
  void* alloc(i64 bytes, const char* what) override {
    MT_CHECK(bytes >= 0, "negative allocation for ", what);
    if (bytes == 0) return nullptr;
    const size_t n = (size_t(bytes) + 255) / 256 * 256;
    void* p = std::aligned_alloc(256, n);
    MT_INPUT_CHECK(p, "cannot allocate ", bytes, " bytes of host memory for ", what);
    std::memset(p, 0, n);
    return p;
  }
  void free(void* p) override { std::free(p); }
  void to_host(void* dst, const void* src, i64 bytes) override { copy(dst, src, bytes); }
  void to_backend(void* dst, const void* src, i64 bytes) override { copy(dst, src, bytes); }
  void copy(void* dst, const void* src, i64 bytes) override {
    if (bytes > 0 && dst != src) std::memmove(dst, src, size_t(bytes));
  }
  void zero(void* dst, i64 bytes) override {
    if (bytes > 0) std::memset(dst, 0, size_t(bytes));
  }
  void synchronize() override {}
};
}  // namespace

std::unique_ptr<MemOps> make_cpu_mem_ops() { return std::make_unique<CpuMemOps>(); }

}  // namespace moe
