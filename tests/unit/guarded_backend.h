// Owns the guarded test backend: the CPU op tables behind a memory space that host code cannot touch, so a direct host read or write of "device" memory segfaults on a machine without a GPU.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <type_traits>
#include <memory>
#include <utility>

#include "backend/backend.h"
#include "comm/communicator.h"
#include "core/error.h"

namespace moe::test {

// Every region the guarded MemOps handed out (page-aligned mmap), PROT_NONE except while a backend op, a MemOps
// call or a guarded communicator call runs (GuardScope). Process-wide; ops run one at a time on the calling
// thread (OpenMP teams inside an op see the regions open).
class MemoryGuard {
 public:
  static MemoryGuard& get() {
    static MemoryGuard g;
    return g;
  }
  void* alloc(i64 bytes) {
    const size_t n = round_up(size_t(bytes));
    void* p = mmap(nullptr, n, depth_ > 0 ? PROT_READ | PROT_WRITE : PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    MT_CHECK(p != MAP_FAILED, "guarded alloc of ", bytes, " bytes failed");
    regions_[p] = n;
    bytes_ += i64(n);
    return p;  // zero-filled by mmap
  }
  void free(void* p) {
    auto it = regions_.find(p);
    MT_CHECK(it != regions_.end(), "guarded free of a pointer it did not allocate");
    munmap(p, it->second);
    bytes_ -= i64(it->second);
    regions_.erase(it);
  }
  void open() {
    if (depth_++ == 0) protect(PROT_READ | PROT_WRITE);
    ++opens_;
  }
  void close() {
    if (--depth_ == 0) protect(PROT_NONE);
  }
  bool contains(const void* p) const {
    auto it = regions_.upper_bound(const_cast<void*>(p));
    if (it == regions_.begin()) return false;
    --it;
    return static_cast<const char*>(p) < static_cast<const char*>(it->first) + it->second;
  }
  i64 opens() const { return opens_; }        // guarded calls so far (a test checks its run went through here)
  i64 bytes() const { return bytes_; }        // bytes held in guarded regions now
  size_t regions() const { return regions_.size(); }

 private:
  static size_t round_up(size_t n) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    return (std::max<size_t>(n, 1) + page - 1) / page * page;
  }
  void protect(int prot) {
    for (const auto& r : regions_) MT_CHECK(mprotect(r.first, r.second, prot) == 0, "mprotect failed");
  }
  std::map<void*, size_t> regions_;
  int depth_ = 0;
  i64 opens_ = 0, bytes_ = 0;
};

// Opens the guarded regions for its lifetime (nests).
struct GuardScope {
  GuardScope() { MemoryGuard::get().open(); }
  ~GuardScope() { MemoryGuard::get().close(); }
  GuardScope(const GuardScope&) = delete;
  GuardScope& operator=(const GuardScope&) = delete;
};

// Every raw pointer an op is given lives in the guarded space (null allowed): a host pointer handed to a device
// op (tokens, weights) is caught here even though the CPU kernels behind could read it.
inline void require_guarded() {}
template <typename P, typename... R>
void require_guarded(const P& p, const R&... rest) {
  if constexpr (std::is_pointer<P>::value)
    MT_CHECK(p == nullptr || MemoryGuard::get().contains(p), "a backend op was given a host pointer");
  require_guarded(rest...);
}

// Forwards a call to the wrapped table with the regions open, after checking its pointer arguments.
#define MT_GUARDED(fn, ...)          \
  do {                               \
    require_guarded(__VA_ARGS__);    \
    GuardScope guard_;               \
    return in_->fn(__VA_ARGS__);     \
  } while (0)
// The same without the pointer check (calls with host arrays, checked by hand).
#define MT_GUARDED_CALL(call) \
  do {                        \
    GuardScope guard_;        \
    return call;              \
  } while (0)

// "Device" memory: guarded regions; copies and fills with the regions open. Reports MemSpace::Cuda.
class GuardedMemOps final : public MemOps {
 public:
  MemSpace space() const override { return MemSpace::Cuda; }
  void* alloc(i64 bytes, const char* what) override {
    MT_CHECK(bytes >= 0, "negative allocation for ", what);
    return bytes == 0 ? nullptr : MemoryGuard::get().alloc(bytes);
  }
  void free(void* p) override {
    if (p) MemoryGuard::get().free(p);
  }
  void to_host(void* dst, const void* src, i64 bytes) override {
    MT_CHECK(!MemoryGuard::get().contains(dst) && (bytes == 0 || MemoryGuard::get().contains(src)),
             "to_host: dst must be host memory, src guarded");
    copy_bytes(dst, src, bytes);
  }
  void to_backend(void* dst, const void* src, i64 bytes) override {
    MT_CHECK(!MemoryGuard::get().contains(src) && (bytes == 0 || MemoryGuard::get().contains(dst)),
             "to_backend: src must be host memory, dst guarded");
    copy_bytes(dst, src, bytes);
  }
  void copy(void* dst, const void* src, i64 bytes) override {
    MT_CHECK(bytes == 0 || (MemoryGuard::get().contains(dst) && MemoryGuard::get().contains(src)),
             "copy: both buffers must be guarded");
    MT_CHECK(dst == src || static_cast<char*>(dst) + bytes <= src || static_cast<const char*>(src) + bytes <= dst,
             "copy: overlapping buffers (a device copy may not overlap)");
    copy_bytes(dst, src, bytes);
  }
  void zero(void* dst, i64 bytes) override {
    if (bytes <= 0) return;
    GuardScope g;
    std::memset(dst, 0, size_t(bytes));
  }
  void synchronize() override {}

 private:
  static void copy_bytes(void* dst, const void* src, i64 bytes) {
    if (bytes <= 0 || dst == src) return;
    GuardScope g;
    std::memmove(dst, src, size_t(bytes));
  }
};

template <typename T>
class GuardedDense final : public DenseOps<T> {
 public:
  using A = acc_t<T>;
  explicit GuardedDense(std::unique_ptr<DenseOps<T>> in) : in_(std::move(in)) {}
  i64 linear_forward_workspace_bytes(i64 N, i64 i, i64 o) const override { return in_->linear_forward_workspace_bytes(N, i, o); }
  i64 linear_backward_workspace_bytes(i64 N, i64 i, i64 o) const override { return in_->linear_backward_workspace_bytes(N, i, o); }
  void linear_forward(T* y, const T* x, const T* W, i64 N, i64 i, i64 o, Accumulate acc, void* ws) override {
    MT_GUARDED(linear_forward, y, x, W, N, i, o, acc, ws);
  }
  void linear_backward(T* dx, A* dW, const T* dy, const T* x, const T* W, i64 N, i64 i, i64 o, Accumulate a,
                       void* ws) override {
    MT_GUARDED(linear_backward, dx, dW, dy, x, W, N, i, o, a, ws);
  }
  void rmsnorm_forward(T* y, A* rstd, const T* x, const A* w, i64 N, i64 C, double eps) override {
    MT_GUARDED(rmsnorm_forward, y, rstd, x, w, N, C, eps);
  }
  i64 rmsnorm_backward_workspace_bytes(i64 N, i64 C) const override {
    return in_->rmsnorm_backward_workspace_bytes(N, C);
  }
  void rmsnorm_backward(T* dx, A* dw, const T* dy, const T* x, const A* w, const A* rstd, i64 N, i64 C,
                        void* ws) override {
    MT_GUARDED(rmsnorm_backward, dx, dw, dy, x, w, rstd, N, C, ws);
  }
  void rope_table(A* c, A* s, i64 L, i64 D, double theta) override { MT_GUARDED(rope_table, c, s, L, D, theta); }
  void rope_apply(T* x, const A* c, const A* s, i64 B, i64 L, i64 NHx, i64 D, RopeDirection d,
                  const int32_t* doc) override {
    MT_GUARDED(rope_apply, x, c, s, B, L, NHx, D, d, doc);
  }
  i64 attention_workspace_bytes(i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 w) const override {
    return in_->attention_workspace_bytes(B, L, NH, NKV, D, w);
  }
  void attention_forward(T* out, A* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D,
                         i64 w, const int32_t* doc, void* ws) override {
    MT_GUARDED(attention_forward, out, lse, q, k, v, B, L, NH, NKV, D, w, doc, ws);
  }
  void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const A* lse, const T* q, const T* k,
                          const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 w, const int32_t* doc,
                          void* ws) override {
    MT_GUARDED(attention_backward, dq, dk, dv, dout, out, lse, q, k, v, B, L, NH, NKV, D, w, doc, ws);
  }
  void swiglu_forward(T* h, const T* a, const T* b, i64 n) override { MT_GUARDED(swiglu_forward, h, a, b, n); }
  void swiglu_backward(T* da, T* db, const T* dh, const T* a, const T* b, i64 n) override {
    MT_GUARDED(swiglu_backward, da, db, dh, a, b, n);
  }
  double cross_entropy_forward(const T* logits, const int32_t* t, i64 N, i64 V) override {
    MT_GUARDED(cross_entropy_forward, logits, t, N, V);
  }
  void cross_entropy_backward_inplace(T* logits, const int32_t* t, i64 N, i64 V, double scale) override {
    MT_GUARDED(cross_entropy_backward_inplace, logits, t, N, V, scale);
  }
  void embedding_forward(T* x, const T* W, const int32_t* ids, i64 Tn, i64 H) override {
    MT_GUARDED(embedding_forward, x, W, ids, Tn, H);
  }
  void embedding_backward(A* dW, const T* dx, const int32_t* ids, i64 Tn, i64 H, int32_t pad) override {
    MT_GUARDED(embedding_backward, dW, dx, ids, Tn, H, pad);
  }
  void add(T* y, const T* a, const T* b, i64 n) override { MT_GUARDED(add, y, a, b, n); }
  void scale(T* y, const T* x, double s, i64 n) override { MT_GUARDED(scale, y, x, s, n); }
  void lora_dropout(T* y, const T* x, i64 N, i64 C, const LoraDropout& d) override {
    MT_GUARDED(lora_dropout, y, x, N, C, d);
  }
  void copy(T* dst, const T* src, i64 n) override { MT_GUARDED(copy, dst, src, n); }
  void fill_zero(T* dst, i64 n) override { MT_GUARDED(fill_zero, dst, n); }

 private:
  std::unique_ptr<DenseOps<T>> in_;
};

template <typename T>
class GuardedMoe final : public MoeOps<T> {
 public:
  using A = acc_t<T>;
  explicit GuardedMoe(std::unique_ptr<MoeOps<T>> in) : in_(std::move(in)) {}
  void router_jitter(T* xr, A* noise, const T* x, i64 n, double eps, uint64_t seed, uint32_t step,
                     uint32_t stream) override {
    MT_GUARDED(router_jitter, xr, noise, x, n, eps, seed, step, stream);
  }
  void router_forward(A* logits, A* probs, int* idx, A* w, const T* xr, const A* Wg, const float* bias,
                      const RouterDims& d, double temp, TopkNorm norm) override {
    MT_CHECK(!bias || !MemoryGuard::get().contains(bias), "router_forward: bias is a host array");
    require_guarded(logits, probs, idx, w, xr, Wg);
    MT_GUARDED_CALL(in_->router_forward(logits, probs, idx, w, xr, Wg, bias, d, temp, norm));
  }
  void router_backward(T* dxr, A* dWg, A* dlogits, const A* dtopk_w, const A* logits, const A* probs, const int* idx,
                       const A* w, const T* xr, const A* Wg, const double* aux_dp, double z, const RouterDims& d,
                       double temp, TopkNorm norm) override {
    MT_CHECK(!aux_dp || !MemoryGuard::get().contains(aux_dp), "router_backward: aux_dp is a host array");
    require_guarded(dxr, dWg, dlogits, dtopk_w, logits, probs, idx, w, xr, Wg);
    MT_GUARDED_CALL(in_->router_backward(dxr, dWg, dlogits, dtopk_w, logits, probs, idx, w, xr, Wg, aux_dp, z, d, temp, norm));
  }
  void router_stats(RoutingPlan& plan, const A* probs, const A* logits) override {
    MT_GUARDED(router_stats, plan, probs, logits);
  }
  void build_plan(RoutingPlan& plan, const A* probs, double cf, DropPolicy policy) override {
    MT_GUARDED(build_plan, plan, probs, cf, policy);
  }
  void copy_expert_counts_to_host(i64* host, const RoutingPlan& plan) override {
    MT_CHECK(!MemoryGuard::get().contains(host), "copy_expert_counts_to_host: the destination is host memory");
    MT_GUARDED_CALL(in_->copy_expert_counts_to_host(host, plan));
  }
  void permute(T* xg, const T* x, const RoutingPlan& plan, i64 H) override { MT_GUARDED(permute, xg, x, plan, H); }
  void unpermute(T* dx, const T* dxg, const RoutingPlan& plan, i64 H) override {
    MT_GUARDED(unpermute, dx, dxg, plan, H);
  }
  void pair_keys(i64* keys, const RoutingPlan& plan, uint32_t stream) override {
    MT_GUARDED(pair_keys, keys, plan, stream);
  }
  void combine_forward(T* out, const T* y, const A* w, const RoutingPlan& plan, i64 H) override {
    MT_GUARDED(combine_forward, out, y, w, plan, H);
  }
  void combine_backward(T* dy, A* dw, const T* dout, const T* y, const A* w, const RoutingPlan& plan, i64 H) override {
    MT_GUARDED(combine_backward, dy, dw, dout, y, w, plan, H);
  }
  void reserve_workspace(i64 Tn, i64 H, i64 I, i64 R) override { MT_GUARDED(reserve_workspace, Tn, H, I, R); }
  void grouped_mlp_forward(T* y, ExpertMlpActs<T>& acts, const T* x, const std::vector<RowBlock>& blocks,
                           const ExpertDropout& drop, const ExpertWeights<T>& w, i64 H, i64 I) override {
    MT_GUARDED(grouped_mlp_forward, y, acts, x, blocks, drop, w, H, I);
  }
  void grouped_mlp_backward(T* dx, ExpertGrads<T>& g, T* dh, T* da, T* db, const T* dy, const ExpertMlpActs<T>& acts,
                            const T* x, const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                            const ExpertWeights<T>& w, i64 H, i64 I) override {
    MT_GUARDED(grouped_mlp_backward, dx, g, dh, da, db, dy, acts, x, blocks, drop, w, H, I);
  }
  void add_router_grad(T* dx, const T* dxr, const A* noise, i64 n) override {
    MT_GUARDED(add_router_grad, dx, dxr, noise, n);
  }

 private:
  std::unique_ptr<MoeOps<T>> in_;
};

template <typename T>
class GuardedQuant final : public QuantOps<T> {
 public:
  explicit GuardedQuant(std::unique_ptr<QuantOps<T>> in) : in_(std::move(in)) {}
  void nf4_dequantize(T* out, const Nf4View& q) override {
    require_guarded(out, q.codes, q.absmax, q.qabsmax, q.absmax2);
    MT_GUARDED_CALL(in_->nf4_dequantize(out, q));
  }

 private:
  std::unique_ptr<QuantOps<T>> in_;
};

class GuardedOptim final : public OptimOps {
 public:
  explicit GuardedOptim(std::unique_ptr<OptimOps> in) : in_(std::move(in)) {}
  void adamw(const std::vector<AdamWPiece>& p, const AdamWHyper& hp, long t, float gs) override {
    for (const AdamWPiece& q : p) require_guarded(q.p, q.g, q.m, q.v);
    MT_GUARDED(adamw, p, hp, t, gs);
  }
  double grad_sq_sum(const float* g, i64 n) override { MT_GUARDED(grad_sq_sum, g, n); }
  void scale(float* x, i64 n, float c) override { MT_GUARDED(scale, x, n, c); }
  void round_to_bf16(bf16* d, const float* s, i64 n) override { MT_GUARDED(round_to_bf16, d, s, n); }
  void accumulate(float* d, const float* s, i64 n) override { MT_GUARDED(accumulate, d, s, n); }
  void reserve(const std::vector<AdamWPiece>& p, i64 max_sq_n) override {
    for (const AdamWPiece& q : p) require_guarded(q.p, q.g, q.m, q.v);
    in_->reserve(p, max_sq_n);
  }

 private:
  std::unique_ptr<OptimOps> in_;
};

// The CPU tables of T behind the guard, in MemSpace::Cuda.
template <typename T>
std::unique_ptr<Backend<T>> make_guarded_backend() {
  auto cpu = make_cpu_backend<T>();
  auto b = std::make_unique<Backend<T>>();
  b->space = MemSpace::Cuda;
  b->mem = std::make_unique<GuardedMemOps>();
  b->dense = std::make_unique<GuardedDense<T>>(std::move(cpu->dense));
  b->moe = std::make_unique<GuardedMoe<T>>(std::move(cpu->moe));
  b->optim = std::make_unique<GuardedOptim>(std::move(cpu->optim));
  b->quant = std::make_unique<GuardedQuant<T>>(std::move(cpu->quant));
  return b;
}

// A host communicator moving "device" (guarded) buffers, as NCCL moves device memory: every call runs with the
// regions open. Non-blocking calls complete before they return (a host MPI transfer in the background would
// otherwise touch closed regions), so their wait() is a no-op.
class GuardedComm final : public Communicator {
 public:
  explicit GuardedComm(std::unique_ptr<Communicator> own) : own_(std::move(own)), in_(*own_) {}
  explicit GuardedComm(Communicator& in) : in_(in) {}
  int rank() const override { return in_.rank(); }
  int size() const override { return in_.size(); }
  MemSpace buffer_space() const override { return MemSpace::Cuda; }
  void all_reduce_sum(void* b, i64 n, CommDtype t) override {
    check(b, n);
    MT_GUARDED_CALL(in_.all_reduce_sum(b, n, t));
  }
  void iall_reduce_sum(void* b, i64 n, CommDtype t, CommRequest& r) override {
    all_reduce_sum(b, n, t);
    r.pending = false;
  }
  void reduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t) override {
    check(recv, n);
    check(send, n);
    MT_GUARDED_CALL(in_.reduce_scatter_sum(recv, send, n, t));
  }
  void ireduce_scatter_sum(void* recv, const void* send, i64 n, CommDtype t, CommRequest& r) override {
    reduce_scatter_sum(recv, send, n, t);
    r.pending = false;
  }
  void all_gather(void* recv, const void* send, i64 n, CommDtype t) override {
    check(recv, n);
    check(send, n);
    MT_GUARDED_CALL(in_.all_gather(recv, send, n, t));
  }
  void iall_gather(void* recv, const void* send, i64 n, CommDtype t, CommRequest& r) override {
    all_gather(recv, send, n, t);
    r.pending = false;
  }
  void wait(CommRequest& r) override { r.pending = false; }
  void all_to_all_v(const void* send, const i64* sc, const i64* sd, void* recv, const i64* rc, const i64* rd,
                    CommDtype t) override {
    require_guarded(send, recv);
    MT_GUARDED_CALL(in_.all_to_all_v(send, sc, sd, recv, rc, rd, t));
  }
  void broadcast(void* b, i64 n, CommDtype t, int root) override {
    check(b, n);
    MT_GUARDED_CALL(in_.broadcast(b, n, t, root));
  }
  void barrier() override { in_.barrier(); }
  const void* mpi_handle() const override { return in_.mpi_handle(); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<GuardedComm>(in_.split(color, key));
  }

 private:
  // A buffer of this communicator lives in the guarded space (like NCCL, which refuses host pointers).
  static void check(const void* p, i64 n) {
    MT_CHECK(n == 0 || MemoryGuard::get().contains(p), "guarded communicator given a host buffer");
  }
  std::unique_ptr<Communicator> own_;
  Communicator& in_;
};

#undef MT_GUARDED
#undef MT_GUARDED_CALL

}  // namespace moe::test
