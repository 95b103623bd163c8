// Owns the NCCL backend of the Communicator (device buffers, its own stream ordered after the compute stream by
// an event, see the ordering contract in communicator.h); the only file that includes nccl.h.
#include <cuda_runtime.h>
#include <nccl.h>

#include <vector>

#include "comm/communicator.h"
#include "core/error.h"

#define MT_CUDA(call)                                                                        \
  do {                                                                                       \
    const cudaError_t e_ = (call);                                                           \
    MT_CHECK(e_ == cudaSuccess, #call " failed: ", cudaGetErrorString(e_));                  \
  } while (0)
#define MT_NCCL(call)                                                                        \
  do {                                                                                       \
    const ncclResult_t r_ = (call);                                                          \
    MT_CHECK(r_ == ncclSuccess, #call " failed: ", ncclGetErrorString(r_));                  \
  } while (0)

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

class NcclComm final : public Communicator {
 public:
  NcclComm(ncclComm_t c, cudaStream_t s, bool owns_stream) : comm_(c), stream_(s), owns_stream_(owns_stream) {
    MT_NCCL(ncclCommUserRank(c, &rank_));
    MT_NCCL(ncclCommCount(c, &size_));
    MT_CUDA(cudaMalloc(&scratch_, 8));
    MT_CUDA(cudaEventCreateWithFlags(&after_compute_, cudaEventDisableTiming));
    for (auto& e : req_events_) MT_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  ~NcclComm() override {
    cudaEventDestroy(after_compute_);
    for (auto& e : req_events_) cudaEventDestroy(e);
    cudaFree(scratch_);
    ncclCommDestroy(comm_);
    if (owns_stream_) cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MemSpace buffer_space() const override { return MemSpace::Cuda; }
  void set_compute_stream(void* stream) override { compute_ = static_cast<cudaStream_t>(stream); }

  void all_reduce_sum(void* buf, i64 n, CommDtype t) override {
    CommRequest r;
    iall_reduce_sum(buf, n, t, r);
    wait(r);
  }
  void iall_reduce_sum(void* buf, i64 n, CommDtype t, CommRequest& req) override {
    check_sum_dtype(t);
    after_compute();
    MT_NCCL(ncclAllReduce(buf, buf, size_t(n), nccl_type(t), ncclSum, comm_, stream_));
    record(req);
  }
  void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) override {
    check_sum_dtype(t);
    after_compute();
    MT_NCCL(ncclReduceScatter(send, recv, size_t(n), nccl_type(t), ncclSum, comm_, stream_));
    MT_CUDA(cudaStreamSynchronize(stream_));
  }
  void all_gather(void* recv, const void* send, i64 n, CommDtype t) override {
    CommRequest r;
    iall_gather(recv, send, n, t, r);
    wait(r);
  }
  void iall_gather(void* recv, const void* send, i64 n, CommDtype t, CommRequest& req) override {
    after_compute();
    MT_NCCL(ncclAllGather(send, recv, size_t(n), nccl_type(t), comm_, stream_));
    record(req);
  }
  void wait(CommRequest& req) override {
    if (!req.pending) return;
    MT_CUDA(cudaEventSynchronize(req_events_[req.handle]));
    req_busy_[req.handle] = false;
    req.pending = false;
  }
  // Counts were exchanged beforehand; paired send/recv inside one group.
  void all_to_all_v(const void* send, const i64* sc, const i64* sd, void* recv, const i64* rc, const i64* rd,
                    CommDtype t) override {
    const size_t b = comm_dtype_bytes(t);
    after_compute();
    MT_NCCL(ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      if (sc[p] > 0)
        MT_NCCL(ncclSend(static_cast<const char*>(send) + size_t(sd[p]) * b, size_t(sc[p]), nccl_type(t), p, comm_, stream_));
      if (rc[p] > 0)
        MT_NCCL(ncclRecv(static_cast<char*>(recv) + size_t(rd[p]) * b, size_t(rc[p]), nccl_type(t), p, comm_, stream_));
    }
    MT_NCCL(ncclGroupEnd());
    MT_CUDA(cudaStreamSynchronize(stream_));
  }
  void broadcast(void* buf, i64 n, CommDtype t, int root) override {
    after_compute();
    MT_NCCL(ncclBroadcast(buf, buf, size_t(n), nccl_type(t), root, comm_, stream_));
    MT_CUDA(cudaStreamSynchronize(stream_));
  }
  void barrier() override { all_reduce_sum(scratch_, 1, CommDtype::F32); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    ncclComm_t c;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    MT_NCCL(ncclCommSplit(comm_, color, key, &c, &cfg));
    cudaStream_t s;
    MT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    auto sub = std::make_unique<NcclComm>(c, s, true);
    sub->set_compute_stream(compute_);
    return sub;
  }

 private:
  // The communicator's stream waits for everything queued on the compute stream so far.
  void after_compute() {
    MT_CUDA(cudaEventRecord(after_compute_, compute_));
    MT_CUDA(cudaStreamWaitEvent(stream_, after_compute_, 0));
  }
  // Records the completion of the call just queued into a free event of the ring.
  void record(CommRequest& req) {
    MT_CHECK(!req.pending, "request reused before wait()");
    int k = -1;
    for (int i = 0; i < kRequestEvents && k < 0; ++i)
      if (!req_busy_[(next_ + i) % kRequestEvents]) k = (next_ + i) % kRequestEvents;
    MT_CHECK(k >= 0, "more than ", kRequestEvents, " NCCL requests outstanding");
    next_ = (k + 1) % kRequestEvents;
    MT_CUDA(cudaEventRecord(req_events_[k], stream_));
    req_busy_[k] = true;
    req.handle = uint64_t(k);
    req.pending = true;
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  bool owns_stream_;
  int rank_ = 0, size_ = 1;
  void* scratch_ = nullptr;
  cudaStream_t compute_ = nullptr;  // the legacy default stream until set_compute_stream
  cudaEvent_t after_compute_ = nullptr;
  cudaEvent_t req_events_[kRequestEvents] = {};
  bool req_busy_[kRequestEvents] = {};
  int next_ = 0;
};
}  // namespace

std::unique_ptr<Communicator> make_nccl_world(Communicator& bootstrap, int local_rank) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    MT_INPUT_FAIL("parallel.backend: nccl needs a CUDA GPU, and none is visible on this node");
  MT_CUDA(cudaSetDevice(local_rank % devices));
  ncclUniqueId id;
  if (bootstrap.rank() == 0) MT_NCCL(ncclGetUniqueId(&id));
  bootstrap.broadcast(&id, i64(sizeof id), CommDtype::U8, 0);
  ncclComm_t c;
  MT_NCCL(ncclCommInitRank(&c, bootstrap.size(), id, bootstrap.rank()));
  cudaStream_t s;
  MT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return std::make_unique<NcclComm>(c, s, true);
}

}  // namespace moe
