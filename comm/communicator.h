// Owns the Communicator interface (DESIGN §3): collectives over host buffers, groups by split; MPI lives behind it.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/dims.h"

namespace moe {

enum class CommDtype { F32, F64, I64, U8 };

inline size_t comm_dtype_bytes(CommDtype t) { return t == CommDtype::F32 ? 4 : t == CommDtype::U8 ? 1 : 8; }

// Non-blocking handle; wait() completes the operation (no-op for already-complete ones).
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: buf[n] = Σ over ranks.
  virtual void all_reduce_sum(void* buf, i64 n, CommDtype t) = 0;
  virtual std::unique_ptr<CommRequest> iall_reduce_sum(void* buf, i64 n, CommDtype t) = 0;
  // send[size·n] → recv[n] = Σ over ranks of chunk `rank` (equal chunks).
  virtual void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) = 0;
  // send[n] → recv[size·n], chunk r from rank r.
  virtual void all_gather(void* recv, const void* send, i64 n, CommDtype t) = 0;
  virtual std::unique_ptr<CommRequest> iall_gather(void* recv, const void* send, i64 n, CommDtype t) = 0;
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

// World communicator from the launcher (mpirun / srun --mpi=pmix): initialises MPI.
// Only available when built with MPI (MOE_HAVE_MPI).
std::unique_ptr<Communicator> make_mpi_world();
// NCCL world on device buffers (built with CUDA): picks GPU local_rank % device_count, rank 0 creates the
// unique id and broadcasts it over `bootstrap` (the MPI world). Throws BadInput when no GPU is present.
std::unique_ptr<Communicator> make_nccl_world(Communicator& bootstrap, int local_rank);

// Ends MPI cleanly (after the last collective); abort_world kills every rank (used on errors so none hangs).
void finalize_mpi();
[[noreturn]] void abort_world(int code);

}  // namespace moe
