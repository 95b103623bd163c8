// Owns the single-process Communicator (collectives over one rank are copies or no-ops) and the NCCL timeout setting.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "comm/communicator.h"
#include "core/error.h"

namespace moe {

void check_sum_dtype(CommDtype t) {
  MT_CHECK(t == CommDtype::F32 || t == CommDtype::F64 || t == CommDtype::I64,
           "collective sums take F32, F64 or I64 buffers (BF16/U8 payloads are only moved)");
}

static size_t dtype_bytes(CommDtype t) { return comm_dtype_bytes(t); }

namespace {
class SelfComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  MemSpace buffer_space() const override { return MemSpace::Host; }
  void all_reduce_sum(void*, i64, CommDtype t) override { check_sum_dtype(t); }
  void iall_reduce_sum(void*, i64, CommDtype t, CommRequest& req) override {
    check_sum_dtype(t);
    req.pending = false;
  }
  void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) override {
    check_sum_dtype(t);
    if (recv != send) std::memmove(recv, send, size_t(n) * dtype_bytes(t));
  }
  void ireduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) override {
    reduce_scatter_sum(recv, send, n, t);
    req.pending = false;
  }
  void all_gather(void* recv, const void* send, i64 n, CommDtype t) override {
    if (recv != send) std::memmove(recv, send, size_t(n) * dtype_bytes(t));
  }
  void iall_gather(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) override {
    all_gather(recv, send, n, t);
    req.pending = false;
  }
  void wait(CommRequest& req) override { req.pending = false; }
  void all_to_all_v(const void* send, const i64* sc, const i64* sd, void* recv, const i64* rc, const i64* rd,
                    CommDtype t) override {
    MT_CHECK(sc[0] == rc[0], "self all_to_all_v count mismatch");
    const size_t b = dtype_bytes(t);
    std::memmove(static_cast<char*>(recv) + rd[0] * b, static_cast<const char*>(send) + sd[0] * b, size_t(sc[0]) * b);
  }
  void broadcast(void*, i64, CommDtype, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SelfComm>(); }
};
}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfComm>(); }

double nccl_timeout_s() {
  const char* v = std::getenv("MOE_NCCL_TIMEOUT_S");
  if (!v || !*v) return 600;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  MT_INPUT_CHECK(end && *end == '\0' && std::isfinite(s) && s > 0, "MOE_NCCL_TIMEOUT_S='", v,
                 "': expected a number of seconds > 0 (how long a collective may wait for its peers; default 600)");
  return s;
}

}  // namespace moe
