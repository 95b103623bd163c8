// Owns the CUDA optimizer op table: multi-tensor AdamW over a device table of chunks, Σg² in double with one
// device->host copy, gradient scaling and bf16 rounding, all queued on the backend's stream.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"
#include "kernels/cuda/optim_kernels.h"

namespace moe {

namespace {

bool same_pieces(const std::vector<AdamWPiece>& a, const std::vector<AdamWPiece>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].p != b[i].p || a[i].g != b[i].g || a[i].m != b[i].m || a[i].v != b[i].v || a[i].n != b[i].n ||
        a[i].decay != b[i].decay)
      return false;
  return true;
}

class CudaOptimOps final : public OptimOps {
 public:
  explicit CudaOptimOps(CudaContext& ctx) : ctx_(ctx) {
    MT_CUDA(cudaSetDevice(ctx_.device));
    MT_CUDA(cudaMallocHost(&host_sum_, sizeof(double)));
  }
  ~CudaOptimOps() override {
    cudaStreamSynchronize(ctx_.stream);
    cudaFree(table_);
    cudaFree(scratch_);
    cudaFreeHost(host_sum_);
  }

  // contract: C5.adamw
  // The chunk table is staged to the device when the piece list differs from the last staged one (ParamState keeps
  // one list for the whole run and stages it through reserve() at construction, so never in the step loop).
  void adamw(const std::vector<AdamWPiece>& pieces, const AdamWHyper& hp, long t, float grad_scale) override {
    if (!same_pieces(pieces, staged_)) stage(pieces);
    const AdamWStep c = adamw_step_consts(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, t);
    adamw_chunks_cuda(table_, i64(chunks_.size()), c, grad_scale, ctx_.stream);
  }

  // contract: C5.clip
  // One device->host copy (and stream synchronization) per call: the value is needed on the host for the norm.
  double grad_sq_sum(const float* g, i64 n) override {
    const i64 need = grad_sq_sum_scratch(n);
    grow_scratch(need);  // nothing after reserve() (ParamState plans its largest n before step 0)
    double* out = scratch_ + (need - 1);
    grad_sq_sum_cuda(out, g, n, scratch_, ctx_.stream);
    MT_CUDA(cudaMemcpyAsync(host_sum_, out, sizeof(double), cudaMemcpyDeviceToHost, ctx_.stream));
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));
    return *host_sum_;
  }

  void scale(float* x, i64 n, float coef) override { scale_cuda(x, n, coef, ctx_.stream); }
  void accumulate(float* dst, const float* src, i64 n) override { accumulate_cuda(dst, src, n, ctx_.stream); }
  void round_to_bf16(bf16* dst, const float* src, i64 n) override { round_to_bf16_cuda(dst, src, n, ctx_.stream); }
  // Before step 0: the device chunk table of the run's piece list and the Σg² partials for its largest call.
  void reserve(const std::vector<AdamWPiece>& pieces, i64 max_sq_n) override {
    if (!same_pieces(pieces, staged_)) stage(pieces);
    grow_scratch(grad_sq_sum_scratch(max_sq_n));
  }

 private:
  void grow_scratch(i64 need) {
    if (need <= scratch_n_) return;
    MT_CUDA(cudaStreamSynchronize(ctx_.stream));  // a queued Σg² may still use the old partials
    MT_CUDA(cudaFree(scratch_));
    scratch_ = nullptr;
    MT_CUDA(cudaMalloc(&scratch_, size_t(need) * sizeof(double)));
    scratch_n_ = need;
  }
  void stage(const std::vector<AdamWPiece>& pieces) {
    chunks_.clear();
    for (const AdamWPiece& pc : pieces)
      for (i64 o = 0; o < pc.n; o += kAdamWChunk)
        chunks_.push_back({pc.p + o, pc.g + o, pc.m + o, pc.v + o, std::min(pc.n - o, kAdamWChunk), pc.decay ? 1 : 0});
    if (i64(chunks_.size()) > table_n_) {
      MT_CUDA(cudaStreamSynchronize(ctx_.stream));  // a launch queued earlier may still read the old table
      MT_CUDA(cudaFree(table_));
      table_ = nullptr;
      MT_CUDA(cudaMalloc(&table_, chunks_.size() * sizeof(AdamWChunk)));
      table_n_ = i64(chunks_.size());
    }
    // From pageable memory: returns once chunks_ has been staged, so chunks_ may change afterwards.
    if (!chunks_.empty())
      MT_CUDA(cudaMemcpyAsync(table_, chunks_.data(), chunks_.size() * sizeof(AdamWChunk), cudaMemcpyHostToDevice,
                              ctx_.stream));
    staged_ = pieces;
  }

  CudaContext& ctx_;
  std::vector<AdamWPiece> staged_;  // the piece list the device table was built from
  std::vector<AdamWChunk> chunks_;  // host copy of the table
  AdamWChunk* table_ = nullptr;     // device
  i64 table_n_ = 0;
  double* scratch_ = nullptr;  // device: Σg² partials, the last entry holds the result
  i64 scratch_n_ = 0;
  double* host_sum_ = nullptr;  // pinned
};

}  // namespace

std::unique_ptr<OptimOps> make_cuda_optim_ops(CudaContext& ctx) { return std::make_unique<CudaOptimOps>(ctx); }

}  // namespace moe
