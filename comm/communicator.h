// Owns the Communicator interface (DESIGN §3): collectives over host or device buffers, groups by split, the
// ordering contract; MPI, NCCL and the single-process communicator live behind it.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/dims.h"
#include "core/tensor.h"

namespace moe {

// BF16: 2-byte bfloat16 payloads (core/bf16.h), moved bit for bit. Gathers, all-to-all and broadcast accept
// it; sums of BF16 are refused (MT_CHECK): reductions run in fp32 (weight gradients are fp32, contract B1).
enum class CommDtype { F32, F64, I64, U8, BF16 };

inline size_t comm_dtype_bytes(CommDtype t) {
  switch (t) {
    case CommDtype::F32: return 4;
    case CommDtype::F64: case CommDtype::I64: return 8;
    case CommDtype::U8: return 1;
    case CommDtype::BF16: return 2;
  }
  return 1;
}

// Ordering contract (every implementation keeps it; callers rely on nothing more):
// - Every rank of a communicator makes the same collective calls in the same order (split included).
// - Buffers are in buffer_space(): Host for MPI and the self communicator, Cuda (device memory of the
//   current GPU) for NCCL. A buffer in another space is an error of the caller, not converted.
// - Host communicators (MPI, self): a blocking call has completed when it returns (recv written, send free
//   to reuse). A non-blocking call (i…) may proceed in the background; its buffers must not be touched until
//   its request's wait() returns, and wait() is the completion point. Calls complete in call order as far
//   as any rank can observe.
// - NCCL: every call is enqueued on the communicator's own stream, which first waits on an event recorded on
//   the compute stream at the call (so it sees every kernel queued before the call). Blocking calls return
//   after the stream has finished the call (recv readable from the host and any stream). A request's wait()
//   makes the host wait for the call; work queued on the compute stream after the call is not ordered after
//   the collective unless the caller waited (or made the compute stream wait on the request's event).
// - Sums (all_reduce_sum, reduce_scatter_sum) take F32, F64 or I64; BF16 and U8 sums are refused.

// A non-blocking operation's handle: a plain value the caller owns and reuses, so starting an operation allocates
// nothing. `handle` is the backend's own (an MPI_Request, an index into the NCCL communicator's event ring); only
// the communicator that started the operation may wait on it. wait() on an idle request returns at once.
struct CommRequest {
  uint64_t handle = 0;
  bool pending = false;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The memory space every buffer passed to this communicator must live in (see the ordering contract).
  virtual MemSpace buffer_space() const = 0;
  // The stream (cudaStream_t) compute kernels are queued on; NCCL orders each call after it. Host: ignored.
  virtual void set_compute_stream(void* stream) { (void)stream; }

  // In place: buf[n] = Σ over ranks.
  virtual void all_reduce_sum(void* buf, i64 n, CommDtype t) = 0;
  virtual void iall_reduce_sum(void* buf, i64 n, CommDtype t, CommRequest& req) = 0;
  // send[size·n] → recv[n] = Σ over ranks of chunk `rank` (equal chunks). In place when recv is this rank's
  // own chunk of send (recv == send + rank·n): the other chunks of send are then clobbered.
  virtual void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) = 0;
  // The same, non-blocking (ordering contract): send and recv stay untouched by the caller until wait(req);
  // recv holds the sum after it. In place as above (the other chunks of send are clobbered by then).
  virtual void ireduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) = 0;
  // send[n] → recv[size·n], chunk r from rank r.
  virtual void all_gather(void* recv, const void* send, i64 n, CommDtype t) = 0;
  virtual void iall_gather(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) = 0;
  // Completes a request this communicator started (no-op when it is not pending).
  virtual void wait(CommRequest& req) = 0;
  // Variable all-to-all in elements: send_counts/send_displs/recv_counts/recv_displs have size() entries.
  virtual void all_to_all_v(const void* send, const i64* send_counts, const i64* send_displs, void* recv,
                            const i64* recv_counts, const i64* recv_displs, CommDtype t) = 0;
  virtual void broadcast(void* buf, i64 n, CommDtype t, int root) = 0;
  virtual void barrier() = 0;
  // The MPI communicator (MPI_Comm*) for libraries that take one (parallel HDF5); null when there is none.
  virtual const void* mpi_handle() const { return nullptr; }
  // Ranks with equal color form a group, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Typed helpers.
  void all_reduce_sum(float* b, i64 n) { all_reduce_sum(b, n, CommDtype::F32); }
  void all_reduce_sum(double* b, i64 n) { all_reduce_sum(b, n, CommDtype::F64); }
  void all_reduce_sum(int64_t* b, i64 n) { all_reduce_sum(b, n, CommDtype::I64); }
};

// One process, no MPI: every collective is the identity.
std::unique_ptr<Communicator> make_self_communicator();

// MT_CHECK that a sum of dtype t is supported (F32, F64, I64): shared by every implementation.
void check_sum_dtype(CommDtype t);

// World communicator from the launcher (mpirun / srun --mpi=pmix): initialises MPI.
// Only available when built with MPI (MOE_HAVE_MPI).
std::unique_ptr<Communicator> make_mpi_world();
// NCCL world on device buffers (built with CUDA): picks GPU local_rank % device_count, rank 0 creates the
// unique id and broadcasts it over `bootstrap` (the MPI world). Throws BadInput when no GPU is present.
std::unique_ptr<Communicator> make_nccl_world(Communicator& bootstrap, int local_rank);

// Seconds an NCCL wait may take before the job is aborted: MOE_NCCL_TIMEOUT_S (default 600). BadInput (exit 2)
// naming the variable when it is set to anything but a finite number > 0 (preflight checks it before a run).
double nccl_timeout_s();

// Ends MPI cleanly (after the last collective); abort_world kills every rank (used on errors so none hangs).
void finalize_mpi();
[[noreturn]] void abort_world(int code);

}  // namespace moe
