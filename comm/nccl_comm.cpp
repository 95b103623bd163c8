// Owns the NCCL backend of the Communicator (device buffers, its own stream ordered after the compute stream by
// an event, see the ordering contract in communicator.h) and its failure policy: every wait polls NCCL's async error
// and a timeout, and an error or a stuck peer aborts every rank with a message naming the collective. The only file
// that includes nccl.h.
#include <cuda_runtime.h>
#include <nccl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "comm/communicator.h"
#include "core/error.h"

namespace moe {

static ncclDataType_t nccl_type(CommDtype t) {
  switch (t) {
    case CommDtype::F32: return ncclFloat32;
    case CommDtype::F64: return ncclFloat64;
    case CommDtype::I64: return ncclInt64;
    case CommDtype::U8: return ncclUint8;
    case CommDtype::BF16: return ncclBfloat16;  // moved only: sums are refused by check_sum_dtype
  }
  return ncclUint8;
}

namespace {
// Requests are events of a ring created once: handle = index of the event recorded after the call.
constexpr int kRequestEvents = 16;
using Clock = std::chrono::steady_clock;

// Spins for the first millisecond of a wait (short collectives), then polls every 100 µs.
void backoff(Clock::time_point t0) {
  if (Clock::now() - t0 > std::chrono::milliseconds(1)) std::this_thread::sleep_for(std::chrono::microseconds(100));
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The failure path of every NCCL wait: one message naming the rank and the call, the communicator aborted (its
// kernels and proxy threads stop), then every rank of the job (abort_world), so no peer is left waiting.
[[noreturn]] void die(ncclComm_t comm, int rank, int size, const char* what, const std::string& why) {
  std::string detail;
  if (comm) {
    const char* last = ncclGetLastError(comm);
    if (last && *last) detail = std::string(" (NCCL: ") + last + ")";
  }
  spdlog::error("[rank {}/{}] NCCL {} failed: {}{}; aborting the communicator and every rank", rank, size, what, why,
                detail);
  if (comm) ncclCommAbort(comm);
  abort_world(1);
}

// Waits until a non-blocking communicator leaves ncclInProgress (an init, split, finalize or enqueue in progress).
void wait_ready(ncclComm_t comm, int rank, int size, const char* what, double timeout_s) {
  const Clock::time_point t0 = Clock::now();
  for (;;) {
    ncclResult_t st = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &st);
    if (r != ncclSuccess) die(comm, rank, size, what, std::string("ncclCommGetAsyncError: ") + ncclGetErrorString(r));
    if (st == ncclSuccess) return;
    if (st != ncclInProgress) die(comm, rank, size, what, ncclGetErrorString(st));
    if (seconds_since(t0) > timeout_s)
      die(comm, rank, size, what,
          "timed out after " + fmt::format("{:g}", timeout_s) + " s (MOE_NCCL_TIMEOUT_S) waiting for the other ranks");
    backoff(t0);
  }
}

// The result of a call on a non-blocking communicator: ncclSuccess, ncclInProgress (then wait), or an error.
void issued(ncclResult_t r, ncclComm_t comm, int rank, int size, const char* what, double timeout_s) {
  if (r == ncclSuccess) return;
  if (r != ncclInProgress) die(comm, rank, size, what, ncclGetErrorString(r));
  wait_ready(comm, rank, size, what, timeout_s);
}

class NcclComm final : public Communicator {
 public:
  NcclComm(ncclComm_t c, cudaStream_t s, int device, double timeout_s)
      : comm_(c), stream_(s), device_(device), timeout_s_(timeout_s) {
    MT_NCCL(ncclCommUserRank(c, &rank_));
    MT_NCCL(ncclCommCount(c, &size_));
    MT_CUDA(cudaMalloc(&scratch_, 8));
    MT_CUDA(cudaEventCreateWithFlags(&after_compute_, cudaEventDisableTiming));
    MT_CUDA(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    for (auto& e : req_events_) MT_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  ~NcclComm() override {
    // While an exception unwinds (an error of this rank alone) the peers are not finalizing with us: ncclCommFinalize
    // waits for the communicator to be globally quiescent, so it would hold this rank (and its error message) for
    // MOE_NCCL_TIMEOUT_S per communicator. Abort at once instead: in-flight operations stop, the caller aborts the job.
    if (std::uncaught_exceptions() > 0) {
      ncclCommAbort(comm_);
      release();
      return;
    }
    // Finalize flushes what was issued; a peer that never answers makes it an abort (no hang at exit).
    ncclResult_t r = ncclCommFinalize(comm_);
    const Clock::time_point t0 = Clock::now();
    ncclResult_t st = r;
    while (r == ncclSuccess || r == ncclInProgress) {
      if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess || st != ncclInProgress) break;
      if (seconds_since(t0) > timeout_s_) break;
      backoff(t0);
    }
    if ((r == ncclSuccess || r == ncclInProgress) && st == ncclSuccess)
      ncclCommDestroy(comm_);
    else
      ncclCommAbort(comm_);
    release();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MemSpace buffer_space() const override { return MemSpace::Cuda; }
  void set_compute_stream(void* stream) override { compute_ = static_cast<cudaStream_t>(stream); }

  void all_reduce_sum(void* buf, i64 n, CommDtype t) override {
    check_sum_dtype(t);
    after_compute();
    issue(ncclAllReduce(buf, buf, size_t(n), nccl_type(t), ncclSum, comm_, stream_), "all_reduce_sum");
    complete("all_reduce_sum");
  }
  void iall_reduce_sum(void* buf, i64 n, CommDtype t, CommRequest& req) override {
    check_sum_dtype(t);
    after_compute();
    issue(ncclAllReduce(buf, buf, size_t(n), nccl_type(t), ncclSum, comm_, stream_), "iall_reduce_sum");
    record(req, "iall_reduce_sum");
  }
  // In place when recv == send + rank·n, which NCCL supports as is.
  void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) override {
    check_sum_dtype(t);
    after_compute();
    issue(ncclReduceScatter(send, recv, size_t(n), nccl_type(t), ncclSum, comm_, stream_), "reduce_scatter_sum");
    complete("reduce_scatter_sum");
  }
  void ireduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) override {
    check_sum_dtype(t);
    after_compute();
    issue(ncclReduceScatter(send, recv, size_t(n), nccl_type(t), ncclSum, comm_, stream_), "ireduce_scatter_sum");
    record(req, "ireduce_scatter_sum");
  }
  void all_gather(void* recv, const void* send, i64 n, CommDtype t) override {
    after_compute();
    issue(ncclAllGather(send, recv, size_t(n), nccl_type(t), comm_, stream_), "all_gather");
    complete("all_gather");
  }
  void iall_gather(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) override {
    after_compute();
    issue(ncclAllGather(send, recv, size_t(n), nccl_type(t), comm_, stream_), "iall_gather");
    record(req, "iall_gather");
  }
  void wait(CommRequest& req) override {
    if (!req.pending) return;
    MT_CHECK(req.handle < uint64_t(kRequestEvents) && req_busy_[req.handle], "wait() on a request this communicator "
             "did not start");
    wait_event(req_events_[req.handle], req_what_[req.handle]);
    req_busy_[req.handle] = false;
    req.pending = false;
  }
  // Counts were exchanged beforehand (so a zero count is zero on both sides and both skip it); every pair of
  // ranks' sends and receives sit in one group, which NCCL runs as one fused operation without ordering deadlocks.
  void all_to_all_v(const void* send, const i64* sc, const i64* sd, void* recv, const i64* rc, const i64* rd,
                    CommDtype t) override {
    const size_t b = comm_dtype_bytes(t);
    after_compute();
    issue(ncclGroupStart(), "all_to_all_v (ncclGroupStart)");
    for (int p = 0; p < size_; ++p) {
      if (sc[p] > 0)
        issue(ncclSend(static_cast<const char*>(send) + size_t(sd[p]) * b, size_t(sc[p]), nccl_type(t), p, comm_,
                       stream_),
              "all_to_all_v (ncclSend)");
      if (rc[p] > 0)
        issue(ncclRecv(static_cast<char*>(recv) + size_t(rd[p]) * b, size_t(rc[p]), nccl_type(t), p, comm_, stream_),
              "all_to_all_v (ncclRecv)");
    }
    issue(ncclGroupEnd(), "all_to_all_v");
    complete("all_to_all_v");
  }
  void broadcast(void* buf, i64 n, CommDtype t, int root) override {
    after_compute();
    issue(ncclBroadcast(buf, buf, size_t(n), nccl_type(t), root, comm_, stream_), "broadcast");
    complete("broadcast");
  }
  void barrier() override {
    after_compute();
    issue(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_), "barrier");
    complete("barrier");
  }
  // Every rank of this communicator calls it (ordering contract); the new communicator is non-blocking like this
  // one, has its own stream and follows the same compute stream.
  std::unique_ptr<Communicator> split(int color, int key) override {
    MT_CHECK(color >= 0, "split: color must be >= 0 (got ", color, ")");
    ncclComm_t c = nullptr;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    issue(ncclCommSplit(comm_, color, key, &c, &cfg), "ncclCommSplit");
    MT_CHECK(c != nullptr, "ncclCommSplit returned no communicator for color ", color);
    wait_ready(c, rank_, size_, "ncclCommSplit", timeout_s_);
    cudaStream_t s;
    MT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    auto sub = std::make_unique<NcclComm>(c, s, device_, timeout_s_);
    sub->set_compute_stream(compute_);
    return sub;
  }

 private:
  // The CUDA objects of this communicator, after the NCCL communicator is gone.
  void release() {
    cudaEventDestroy(after_compute_);
    cudaEventDestroy(done_);
    for (auto& e : req_events_) cudaEventDestroy(e);
    cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }
  // The communicator's stream waits for everything queued on the compute stream so far.
  void after_compute() {
    MT_CUDA(cudaEventRecord(after_compute_, compute_));
    MT_CUDA(cudaStreamWaitEvent(stream_, after_compute_, 0));
  }
  void issue(ncclResult_t r, const char* what) { issued(r, comm_, rank_, size_, what, timeout_s_); }
  // A blocking call: the host waits until the stream has finished it.
  void complete(const char* what) {
    MT_CUDA(cudaEventRecord(done_, stream_));
    wait_event(done_, what);
  }
  // Polls the event, NCCL's async error and the clock: a failed or stuck collective aborts every rank.
  void wait_event(cudaEvent_t ev, const char* what) {
    const Clock::time_point t0 = Clock::now();
    for (;;) {
      const cudaError_t e = cudaEventQuery(ev);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) die(comm_, rank_, size_, what, std::string("CUDA error: ") + cudaGetErrorString(e));
      ncclResult_t st = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
      if (r != ncclSuccess) die(comm_, rank_, size_, what, std::string("ncclCommGetAsyncError: ") + ncclGetErrorString(r));
      if (st != ncclSuccess && st != ncclInProgress) die(comm_, rank_, size_, what, ncclGetErrorString(st));
      if (seconds_since(t0) > timeout_s_)
        die(comm_, rank_, size_, what,
            "timed out after " + fmt::format("{:g}", timeout_s_) +
                " s (MOE_NCCL_TIMEOUT_S): a peer is dead, stuck, or did not make the same call");
      backoff(t0);
    }
  }
  // Records the completion of the call just queued into a free event of the ring.
  void record(CommRequest& req, const char* what) {
    MT_CHECK(!req.pending, "request reused before wait()");
    int k = -1;
    for (int i = 0; i < kRequestEvents && k < 0; ++i)
      if (!req_busy_[(next_ + i) % kRequestEvents]) k = (next_ + i) % kRequestEvents;
    MT_CHECK(k >= 0, "more than ", kRequestEvents, " NCCL requests outstanding");
    next_ = (k + 1) % kRequestEvents;
    MT_CUDA(cudaEventRecord(req_events_[k], stream_));
    req_busy_[k] = true;
    req_what_[k] = what;
    req.handle = uint64_t(k);
    req.pending = true;
  }

  ncclComm_t comm_;
  cudaStream_t stream_;  // owned
  int device_;
  double timeout_s_;
  int rank_ = 0, size_ = 1;
  void* scratch_ = nullptr;
  cudaStream_t compute_ = nullptr;  // the legacy default stream until set_compute_stream
  cudaEvent_t after_compute_ = nullptr;
  cudaEvent_t done_ = nullptr;
  cudaEvent_t req_events_[kRequestEvents] = {};
  bool req_busy_[kRequestEvents] = {};
  const char* req_what_[kRequestEvents] = {};
  int next_ = 0;
};

// What a rank tells the others about its GPU, to refuse two ranks on one GPU before NCCL does (less clearly).
struct GpuSlot {
  unsigned char uuid[16];
  char host[56];
  int32_t gpu;
  int32_t local_rank;
};
}  // namespace

// GPU choice: local rank % visible devices. With every GPU visible to every rank (srun --gpus-per-node=G
// --ntasks-per-node=G, or mpirun) local rank r takes GPU r; with one GPU per task (--gpus-per-task=1, Slurm sets
// CUDA_VISIBLE_DEVICES) every rank takes its device 0. NCCL refuses two ranks of one communicator on the same GPU,
// so more ranks on a node than GPUs is refused here with a message (exit 2) that says how to launch instead.
std::unique_ptr<Communicator> make_nccl_world(Communicator& bootstrap, int local_rank) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    MT_INPUT_FAIL("parallel.backend: nccl needs a CUDA GPU, and none is visible on this node (check "
                  "CUDA_VISIBLE_DEVICES and that the job asked for GPUs, e.g. srun --gpus-per-node)");
  }
  const int gpu = local_rank % devices;
  MT_CUDA(cudaSetDevice(gpu));
  const int R = bootstrap.size(), r = bootstrap.rank();

  GpuSlot mine{};
  cudaDeviceProp prop{};
  MT_CUDA(cudaGetDeviceProperties(&prop, gpu));
  std::memcpy(mine.uuid, prop.uuid.bytes, sizeof mine.uuid);
  gethostname(mine.host, sizeof mine.host - 1);
  mine.gpu = gpu;
  mine.local_rank = local_rank;
  std::vector<GpuSlot> all(static_cast<size_t>(R));
  bootstrap.all_gather(all.data(), &mine, i64(sizeof(GpuSlot)), CommDtype::U8);
  for (int a = 0; a < R; ++a)
    for (int b = a + 1; b < R; ++b)
      MT_INPUT_CHECK(std::memcmp(all[size_t(a)].uuid, all[size_t(b)].uuid, 16) != 0, "parallel.backend: nccl: ranks ",
                     a, " and ", b, " (local ranks ", all[size_t(a)].local_rank, " and ", all[size_t(b)].local_rank,
                     " on ", all[size_t(a)].host, ") would share GPU ", all[size_t(a)].gpu, " (", devices,
                     " visible): NCCL needs one GPU per rank. Start as many ranks per node as it has GPUs (srun "
                     "--ntasks-per-node=G --gpus-per-node=G, or mpirun -np G per node), or use train.device: cpu");

  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (r == 0) MT_NCCL(ncclGetUniqueId(&id));
  bootstrap.broadcast(&id, i64(sizeof id), CommDtype::U8, 0);
  const double timeout_s = nccl_timeout_s();
  ncclComm_t c = nullptr;
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;  // every call returns at once; waits poll with a timeout (a dead peer never hangs the job)
  const ncclResult_t res = ncclCommInitRankConfig(&c, R, id, r, &cfg);
  if (res != ncclSuccess && res != ncclInProgress) die(c, r, R, "ncclCommInitRank", ncclGetErrorString(res));
  wait_ready(c, r, R, "ncclCommInitRank", timeout_s);
  cudaStream_t s;
  MT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return std::make_unique<NcclComm>(c, s, gpu, timeout_s);
}

}  // namespace moe
