// Owns the CPU optimizer op table: AdamW, Σg², scaling, accumulation and bf16 rounding as OpenMP passes over host buffers.
#include "backend/optim_ops.h"
#include "core/parallel_for.h"
#include "kernels/math/adamw.h"

namespace moe {

namespace {
class CpuOptimOps final : public OptimOps {
 public:
  void adamw(const std::vector<AdamWPiece>& pieces, const AdamWHyper& hp, long t, float grad_scale) override {
    adamw_update_pieces(pieces, hp, t, grad_scale);
  }
  double grad_sq_sum(const float* g, i64 n) override { return moe::grad_sq_sum(g, n); }
  void scale(float* x, i64 n, float coef) override {
#pragma omp parallel for simd schedule(static)
    for (i64 i = 0; i < n; ++i) x[i] = scale_element(x[i], coef);
  }
  void round_to_bf16(bf16* dst, const float* src, i64 n) override {
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) dst[i] = bf16(src[i]);
  }
  void accumulate(float* dst, const float* src, i64 n) override {
    parallel_for_above(n, 65536, [&](i64 i) { dst[i] += src[i]; });
  }
};
}  // namespace

std::unique_ptr<OptimOps> make_cpu_optim_ops() { return std::make_unique<CpuOptimOps>(); }

}  // namespace moe
