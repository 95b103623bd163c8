// Owns the MPI backend of the Communicator (host buffers); the only file that includes mpi.h.
// The C API only: skip the deprecated C++ bindings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "comm/communicator.h"
#include "core/error.h"

#define MT_MPI(call)                                                   \
  do {                                                                 \
    const int rc_ = (call);                                            \
    MT_CHECK(rc_ == MPI_SUCCESS, #call " failed with MPI error ", rc_); \
  } while (0)

namespace moe {

static MPI_Datatype mpi_type(CommDtype t) {
  switch (t) {
    case CommDtype::F32: return MPI_FLOAT;
    case CommDtype::F64: return MPI_DOUBLE;
    case CommDtype::I64: return MPI_INT64_T;
    case CommDtype::U8: return MPI_BYTE;
    case CommDtype::BF16: return MPI_UINT16_T;  // moved bit for bit; sums refused before MPI sees it
  }
  return MPI_BYTE;
}

static int as_int(i64 v) {
  MT_CHECK(v >= 0 && v <= INT_MAX, "MPI count out of int range: ", v);
  return int(v);
}

namespace {
// MPI_Request travels in CommRequest::handle (a handle in every MPI implementation: an int or a pointer).
static_assert(sizeof(MPI_Request) <= sizeof(uint64_t), "MPI_Request must fit CommRequest::handle");
void store(CommRequest& r, MPI_Request m) {
  r.handle = 0;
  std::memcpy(&r.handle, &m, sizeof(m));
  r.pending = true;
}

class MpiComm final : public Communicator {
 public:
  MpiComm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(c, &rank_);
    MPI_Comm_size(c, &size_);
    moves_.reserve(kMaxMoves);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MemSpace buffer_space() const override { return MemSpace::Host; }

  void all_reduce_sum(void* buf, i64 n, CommDtype t) override {
    check_sum_dtype(t);
    if (n == 0) return;
    MT_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, as_int(n), mpi_type(t), MPI_SUM, comm_));
  }
  void iall_reduce_sum(void* buf, i64 n, CommDtype t, CommRequest& req) override {
    check_sum_dtype(t);
    MT_CHECK(!req.pending, "request reused before wait()");
    MPI_Request m = MPI_REQUEST_NULL;
    if (n > 0) MT_MPI(MPI_Iallreduce(MPI_IN_PLACE, buf, as_int(n), mpi_type(t), MPI_SUM, comm_, &m));
    store(req, m);
  }
  void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) override {
    check_sum_dtype(t);
    const size_t bytes = comm_dtype_bytes(t) * size_t(n);
    if (recv == static_cast<const char*>(send) + size_t(rank_) * bytes) {
      // In place: MPI leaves the result at the start of the buffer; move it to this rank's chunk.
      void* base = const_cast<void*>(send);
      MT_MPI(MPI_Reduce_scatter_block(MPI_IN_PLACE, base, as_int(n), mpi_type(t), MPI_SUM, comm_));
      if (rank_ != 0) std::memmove(recv, base, bytes);
      return;
    }
    MT_MPI(MPI_Reduce_scatter_block(send, recv, as_int(n), mpi_type(t), MPI_SUM, comm_));
  }
  // In place, the result lands at the start of the buffer (as in the blocking call); the move to this rank's
  // chunk is remembered under the request and made by wait().
  void ireduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) override {
    check_sum_dtype(t);
    MT_CHECK(!req.pending, "request reused before wait()");
    const size_t bytes = comm_dtype_bytes(t) * size_t(n);
    MPI_Request m = MPI_REQUEST_NULL;
    if (recv == static_cast<const char*>(send) + size_t(rank_) * bytes) {
      void* base = const_cast<void*>(send);
      MT_MPI(MPI_Ireduce_scatter_block(MPI_IN_PLACE, base, as_int(n), mpi_type(t), MPI_SUM, comm_, &m));
      store(req, m);
      if (rank_ != 0 && bytes > 0) {
        MT_CHECK(moves_.size() < moves_.capacity(), "more than ", moves_.capacity(),
                 " in-place ireduce_scatter_sum requests outstanding");
        moves_.push_back({req.handle, recv, base, bytes});
      }
      return;
    }
    MT_MPI(MPI_Ireduce_scatter_block(send, recv, as_int(n), mpi_type(t), MPI_SUM, comm_, &m));
    store(req, m);
  }
  void all_gather(void* recv, const void* send, i64 n, CommDtype t) override {
    // A send buffer that is this rank's own chunk of recv is the in-place form.
    const size_t bytes = comm_dtype_bytes(t);
    const bool in_place = send == static_cast<const char*>(recv) + size_t(rank_) * size_t(n) * bytes;
    MT_MPI(MPI_Allgather(in_place ? MPI_IN_PLACE : send, as_int(n), mpi_type(t), recv, as_int(n), mpi_type(t), comm_));
  }
  void iall_gather(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) override {
    MT_CHECK(!req.pending, "request reused before wait()");
    MPI_Request m = MPI_REQUEST_NULL;
    MT_MPI(MPI_Iallgather(send, as_int(n), mpi_type(t), recv, as_int(n), mpi_type(t), comm_, &m));
    store(req, m);
  }
  void wait(CommRequest& req) override {
    if (!req.pending) return;
    MPI_Request m;
    std::memcpy(&m, &req.handle, sizeof(m));
    MT_MPI(MPI_Wait(&m, MPI_STATUS_IGNORE));
    req.pending = false;
    for (size_t k = 0; k < moves_.size(); ++k)
      if (moves_[k].handle == req.handle) {
        std::memmove(moves_[k].dst, moves_[k].src, moves_[k].bytes);
        moves_[k] = moves_.back();
        moves_.pop_back();
        break;
      }
  }
  void all_to_all_v(const void* send, const i64* sc, const i64* sd, void* recv, const i64* rc, const i64* rd,
                    CommDtype t) override {
    std::vector<int>& c = scratch_;
    c.resize(size_t(4 * size_));
    for (int r = 0; r < size_; ++r) {
      c[r] = as_int(sc[r]);
      c[size_ + r] = as_int(sd[r]);
      c[2 * size_ + r] = as_int(rc[r]);
      c[3 * size_ + r] = as_int(rd[r]);
    }
    MT_MPI(MPI_Alltoallv(send, c.data(), c.data() + size_, mpi_type(t), recv, c.data() + 2 * size_,
                         c.data() + 3 * size_, mpi_type(t), comm_));
  }
  void broadcast(void* buf, i64 n, CommDtype t, int root) override {
    MT_MPI(MPI_Bcast(buf, as_int(n), mpi_type(t), root, comm_));
  }
  void barrier() override { MT_MPI(MPI_Barrier(comm_)); }
  const void* mpi_handle() const override { return &comm_; }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm c;
    MT_MPI(MPI_Comm_split(comm_, color, key, &c));
    return std::make_unique<MpiComm>(c, true);
  }

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::vector<int> scratch_;  // counts as int, reused (sized once per world size)
  // In-place ireduce_scatter_sum requests still to move their result (reserved once: nothing allocated per call).
  struct Move {
    uint64_t handle;
    void* dst;
    const void* src;
    size_t bytes;
  };
  static constexpr size_t kMaxMoves = 64;
  std::vector<Move> moves_;
};
}  // namespace

std::unique_ptr<Communicator> make_mpi_world() {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided = 0;
    MT_MPI(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
  }
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
}

void finalize_mpi() {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) MPI_Finalize();
}

void abort_world(int code) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace moe
