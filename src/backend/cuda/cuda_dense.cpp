// Owns the CUDA dense op table (CudaDenseOps<T>, T = bf16 or float): cuBLASLt GEMMs (cublaslt_gemm.h), cuDNN's fused
// attention where it takes the shape (cudnn_sdpa.h) and the kernels of kernels/cuda/dense_kernels.h, all queued on
// the backend's stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "backend/cuda/cublaslt_gemm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cudnn_sdpa.h"
#include "core/error.h"
#include "kernels/cuda/dense_kernels.h"
#include "kernels/ref/rope_ref.h"

namespace moe {

namespace {

template <typename T>
constexpr GemmType gemm_type() {
  return std::is_same<T, bf16>::value ? GemmType::BF16 : GemmType::F32;
}

// Contract: backend/dense_ops.h; bf16 rounding points of DESIGN §8 as the CPU bf16 table (cpu_dense.cpp).
template <typename T>
class CudaDenseOps final : public DenseOps<T> {
 public:
  using A = acc_t<T>;
  static_assert(std::is_same<A, float>::value, "CUDA dense ops: T = float or bf16");

  explicit CudaDenseOps(CudaContext& ctx) : ctx_(ctx), gemm_(ctx), sdpa_(std::make_unique<CudnnSdpa>(ctx)) {
    MT_CUDA(cudaMallocHost(&loss_host_, sizeof(double)));
    MT_CUDA(cudaMalloc(&loss_part_, size_t(kCeMaxBlocks + 1) * sizeof(double)));
  }
  ~CudaDenseOps() override {
    if (ctx_.stream) cudaStreamSynchronize(ctx_.stream);
    if (loss_part_) cudaFree(loss_part_);
    if (loss_host_) cudaFreeHost(loss_host_);
  }

  // The GEMMs write T outputs directly (fp32 accumulation, one rounding in cuBLASLt's epilogue): no scratch.
  i64 linear_forward_workspace_bytes(i64, i64, i64) const override { return 0; }
  i64 linear_backward_workspace_bytes(i64, i64, i64) const override { return 0; }

  // y[N,out] (+)= x[N,in]·W[out,in]ᵀ: with Add, cuBLASLt reads y (beta 1) and rounds acc + y once, as the CPU's
  // round_out(acc + float(y)).
  void linear_forward(T* y, const T* x, const T* W, i64 N, i64 in, i64 out, Accumulate acc, void*) override {
    gemm_.gemm(y, gemm_type<T>(), x, W, gemm_type<T>(), N, out, in, Trans::No, Trans::Yes, in, in, out, 1.f,
               beta(acc));
  }
  // dx[N,in] (+)= dy[N,out]·W[out,in] (T, rounded once); dW[out,in] += dyᵀ·x in fp32 (beta 1, fp32 C/D); dW null
  // (frozen weight): no weight-gradient GEMM.
  void linear_backward(T* dx, A* dW, const T* dy, const T* x, const T* W, i64 N, i64 in, i64 out, Accumulate dx_acc,
                       void*) override {
    if (dx)
      gemm_.gemm(dx, gemm_type<T>(), dy, W, gemm_type<T>(), N, in, out, Trans::No, Trans::No, out, in, in, 1.f,
                 beta(dx_acc));
    if (dW && N > 0)
      gemm_.gemm(dW, GemmType::F32, dy, x, gemm_type<T>(), out, in, N, Trans::Yes, Trans::No, out, in, in, 1.f, 1.f);
  }

  void rmsnorm_forward(T* y, A* rstd, const T* x, const A* w, i64 N, i64 C, double eps) override {
    rmsnorm_forward_cuda<T>(y, rstd, x, w, N, C, eps, ctx_.stream);
  }
  i64 rmsnorm_backward_workspace_bytes(i64 N, i64 C) const override { return rmsnorm_backward_cuda_workspace_bytes(N, C); }
  void rmsnorm_backward(T* dx, A* dw, const T* dy, const T* x, const A* w, const A* rstd, i64 N, i64 C,
                        void* ws) override {
    rmsnorm_backward_cuda<T>(dx, dw, dy, x, w, rstd, N, C, ws, ctx_.stream);
  }

  // Built once at model construction: computed on the host by the CPU twin and copied, so the GPU's angles are
  // bitwise the CPU's (device powf/cosf differ by a few ulp, ~1e-3 rad at position 4096).
  void rope_table(A* cos_t, A* sin_t, i64 L, i64 D, double theta) override {
    const size_t n = size_t(L * (D / 2));
    std::vector<A> c(n), s(n);
    rope_table_ref<T>(c.data(), s.data(), L, D, theta);
    MT_CUDA(cudaMemcpyAsync(cos_t, c.data(), n * sizeof(A), cudaMemcpyHostToDevice, ctx_.stream));
    MT_CUDA(cudaMemcpyAsync(sin_t, s.data(), n * sizeof(A), cudaMemcpyHostToDevice, ctx_.stream));
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));
  }
  // Packed documents (doc_start) are CPU-only so far: preflight refuses data.reset_attention with train.device: cuda.
  void rope_apply(T* x, const A* cos_t, const A* sin_t, i64 B, i64 L, i64 NHx, i64 D, RopeDirection dir,
                  const int32_t* doc_start) override {
    MT_CHECK(doc_start == nullptr, "CUDA rope_apply: packed documents (data.reset_attention) are not implemented");
    rope_apply_cuda<T>(x, cos_t, sin_t, B, L, NHx, D, dir, ctx_.stream);
  }

  // Attention: cuDNN's fused flash attention (bf16) where cuDNN takes the shape, else the hand-written kernels
  // (their twin is the CPU attention). The plan of a shape — cuDNN graphs built, or the reason not, logged once — is
  // made here: the model asks this once per shape at construction, before step 0 (a shape never asked is planned on
  // its first forward, and its workspace is then this same query's answer). Scratch: the larger of cuDNN's workspace
  // and the hand backward's D_i = Σ dout·out per (b, h, i). sdpa_ is a pointer: planning from this const query
  // fills its cache.
  i64 attention_workspace_bytes(i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window) const override {
    const auto& plan = sdpa_->prepare({B, L, NH, NKV, D, window}, sdpa_elem());
    return std::max(attention_cuda_workspace_bytes(B, L, NH), plan.ws_bytes);
  }
  void attention_forward(T* out, A* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D,
                         i64 window, const int32_t* doc_start, void* ws) override {
    MT_CHECK(doc_start == nullptr, "CUDA attention: packed documents (data.reset_attention) are not implemented");
    if constexpr (std::is_same<T, bf16>::value) {
      const SdpaShape s{B, L, NH, NKV, D, window};
      if (sdpa_->prepare(s, sdpa_elem()).fwd && sdpa_->forward(s, out, lse, q, k, v, ws)) return;
    }
    attention_forward_cuda<T>(out, lse, q, k, v, B, L, NH, NKV, D, window, ctx_.stream);
  }
  void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const A* lse, const T* q, const T* k,
                          const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window, const int32_t* doc_start,
                          void* ws) override {
    MT_CHECK(doc_start == nullptr, "CUDA attention: packed documents (data.reset_attention) are not implemented");
    if constexpr (std::is_same<T, bf16>::value) {
      const SdpaShape s{B, L, NH, NKV, D, window};
      if (sdpa_->prepare(s, sdpa_elem()).bwd && sdpa_->backward(s, dq, dk, dv, dout, out, lse, q, k, v, ws)) return;
    }
    attention_backward_cuda<T>(dq, dk, dv, dout, out, lse, q, k, v, B, L, NH, NKV, D, window, ws, ctx_.stream);
  }

  void swiglu_forward(T* h, const T* a, const T* b, i64 n) override { swiglu_forward_cuda<T>(h, a, b, n, ctx_.stream); }
  void swiglu_backward(T* da, T* db, const T* dh, const T* a, const T* b, i64 n) override {
    swiglu_backward_cuda<T>(da, db, dh, a, b, n, ctx_.stream);
  }

  // At most kCeMaxBlocks partial sums of the row losses in a buffer made with the op table (before step 0), their
  // fixed-order sum, one 8-byte D→H copy and the stream sync the contract allows here.
  double cross_entropy_forward(const T* logits, const int32_t* targets, i64 N, i64 V) override {
    if (N == 0) return 0.0;
    cross_entropy_partials_cuda<T>(loss_part_, logits, targets, N, V, ctx_.stream);
    sum_doubles_cuda(loss_part_ + kCeMaxBlocks, loss_part_, cross_entropy_blocks(N), ctx_.stream);
    MT_CUDA(cudaMemcpyAsync(loss_host_, loss_part_ + kCeMaxBlocks, sizeof(double), cudaMemcpyDeviceToHost,
                            ctx_.stream));
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));
    return *loss_host_;
  }
  void cross_entropy_backward_inplace(T* logits, const int32_t* targets, i64 N, i64 V, double scale) override {
    cross_entropy_backward_inplace_cuda<T>(logits, targets, N, V, scale, ctx_.stream);
  }

  void embedding_forward(T* x, const T* W, const int32_t* ids, i64 Tn, i64 H) override {
    embedding_forward_cuda<T>(x, W, ids, Tn, H, ctx_.stream);
  }
  void embedding_backward(A* dW, const T* dx, const int32_t* ids, i64 Tn, i64 H, int32_t pad_id) override {
    embedding_backward_cuda<T>(dW, dx, ids, Tn, H, pad_id, ctx_.stream);
  }

  void add(T* y, const T* a, const T* b, i64 n) override { add_cuda<T>(y, a, b, n, ctx_.stream); }
  void scale(T* y, const T* x, double s, i64 n) override { scale_cuda<T>(y, x, float(s), n, ctx_.stream); }
  void lora_dropout(T* y, const T* x, i64 N, i64 C, const LoraDropout& d) override {
    lora_dropout_cuda<T>(y, x, N, C, d.p, d.seed, d.step, d.stream, d.keys, d.tag, ctx_.stream);
  }
  void copy(T* dst, const T* src, i64 n) override {
    if (n > 0 && dst != src)
      MT_CUDA(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyDeviceToDevice, ctx_.stream));
  }
  // All-zero bits are +0 in fp32 and bf16.
  void fill_zero(T* dst, i64 n) override {
    if (n > 0) MT_CUDA(cudaMemsetAsync(dst, 0, size_t(n) * sizeof(T), ctx_.stream));
  }

 private:
  static float beta(Accumulate acc) { return acc == Accumulate::Add ? 1.f : 0.f; }
  static constexpr SdpaElem sdpa_elem() { return std::is_same<T, bf16>::value ? SdpaElem::Bf16 : SdpaElem::F32; }

  CudaContext& ctx_;
  LtGemm gemm_;
  std::unique_ptr<CudnnSdpa> sdpa_;  // cuDNN attention plans per shape (bf16; float only logs the hand-kernel path)
  double* loss_part_ = nullptr;  // [kCeMaxBlocks] partial sums of the row losses + [1] their sum (device)
  double* loss_host_ = nullptr;  // pinned: the sum's landing place
};

}  // namespace

template <typename T>
std::unique_ptr<DenseOps<T>> make_cuda_dense_ops(CudaContext& ctx) {
  return std::make_unique<CudaDenseOps<T>>(ctx);
}
template std::unique_ptr<DenseOps<float>> make_cuda_dense_ops<float>(CudaContext&);
template std::unique_ptr<DenseOps<bf16>> make_cuda_dense_ops<bf16>(CudaContext&);
}  // namespace moe
