// Owns the CUDA backend's context (GPU, stream, cuBLASLt handle and workspace), its MemOps and make_cuda_backend.
#include "backend/cuda/cuda_backend.h"

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"

namespace moe {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

CudaContext::CudaContext(int gpu) : device(gpu) {
  const int n = cuda_device_count();
  MT_INPUT_CHECK(n > 0, "train.device: cuda: no GPU is visible to this process (cudaGetDeviceCount: 0; check "
                 "CUDA_VISIBLE_DEVICES, the driver, and that the job asked for GPUs, e.g. srun --gpus-per-node)");
  MT_INPUT_CHECK(gpu >= 0 && gpu < n, "train.device: cuda: GPU ", gpu, " requested but only ", n, " visible");
  MT_CUDA(cudaSetDevice(gpu));
  cudaDeviceProp p{};
  MT_CUDA(cudaGetDeviceProperties(&p, gpu));
  name = p.name;
  sm_count = p.multiProcessorCount;
  cc_major = p.major;
  cc_minor = p.minor;
  MT_INPUT_CHECK(cc_major >= 8, "train.device: cuda needs bf16 tensor cores (compute capability 8.0 or newer); GPU ",
                 gpu, " (", name, ") is ", cc_major, ".", cc_minor);
  MT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  MT_CUBLAS(cublasLtCreate(&lt));
  MT_CUBLAS(cublasCreate(&blas));
  MT_CUBLAS(cublasSetStream(blas, stream));
  lt_workspace_bytes = size_t(32) << 20;  // what cuBLASLt's heuristics ask for on Hopper
  MT_CUDA(cudaMalloc(&lt_workspace, lt_workspace_bytes));
  MT_CUBLAS(cublasSetWorkspace(blas, lt_workspace, lt_workspace_bytes));
}

CudaContext::~CudaContext() {
  if (stream) cudaStreamSynchronize(stream);
  if (blas) cublasDestroy(blas);
  if (lt) cublasLtDestroy(lt);
  if (lt_workspace) cudaFree(lt_workspace);
  if (stream) cudaStreamDestroy(stream);
}

namespace {
class CudaMemOps final : public MemOps {
 public:
  explicit CudaMemOps(CudaContext& ctx) : ctx_(ctx) {}
  MemSpace space() const override { return MemSpace::Cuda; }
  void* alloc(i64 bytes, const char* what) override {
    MT_CHECK(bytes >= 0, "negative allocation for ", what);
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, size_t(bytes));
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      MT_INPUT_FAIL("out of GPU memory on ", ctx_.name, " (GPU ", ctx_.device, "): ", what, " needs ", bytes,
                    " bytes, ", free_b, " of ", total_b, " free (", cudaGetErrorString(e),
                    "); lower train.micro_batch or train.seq_len, raise parallel.zero, or set train.recompute");
    }
    MT_CUDA(cudaMemsetAsync(p, 0, size_t(bytes), ctx_.stream));
    return p;
  }
  void free(void* p) override {
    if (!p) return;
    cudaStreamSynchronize(ctx_.stream);
    cudaFree(p);
  }
  void to_host(void* dst, const void* src, i64 bytes) override {
    if (bytes <= 0) return;
    MT_CUDA(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToHost, ctx_.stream));
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));
  }
  void to_backend(void* dst, const void* src, i64 bytes) override {
    if (bytes <= 0) return;
    // From pageable memory the copy is staged before cudaMemcpyAsync returns, so src is free to reuse; pinned
    // memory would be read later, so synchronize to keep the contract for any host buffer.
    MT_CUDA(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyHostToDevice, ctx_.stream));
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));
  }
  void copy(void* dst, const void* src, i64 bytes) override {
    if (bytes > 0 && dst != src)
      MT_CUDA(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToDevice, ctx_.stream));
  }
  void zero(void* dst, i64 bytes) override {
    if (bytes > 0) MT_CUDA(cudaMemsetAsync(dst, 0, size_t(bytes), ctx_.stream));
  }
  void synchronize() override { MT_CUDA(cudaStreamSynchronize(ctx_.stream)); }

 private:
  CudaContext& ctx_;
};
}  // namespace

std::unique_ptr<MemOps> make_cuda_mem_ops(CudaContext& ctx) { return std::make_unique<CudaMemOps>(ctx); }

template <typename T>
std::unique_ptr<Backend<T>> make_cuda_backend(int gpu) {
  auto b = std::make_unique<Backend<T>>();
  auto ctx = std::make_unique<CudaContext>(gpu);
  CudaContext& c = *ctx;
  b->context = std::move(ctx);
  b->space = MemSpace::Cuda;
  b->device_name = c.name;
  b->stream = Stream{c.stream};
  b->mem = make_cuda_mem_ops(c);
  b->dense = make_cuda_dense_ops<T>(c);
  b->moe = make_cuda_moe_ops<T>(c);
  b->optim = make_cuda_optim_ops(c);
  b->quant = make_cuda_quant_ops<T>(c);
  return b;
}

template std::unique_ptr<Backend<float>> make_cuda_backend<float>(int);
template std::unique_ptr<Backend<bf16>> make_cuda_backend<bf16>(int);

}  // namespace moe
