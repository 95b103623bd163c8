// Owns the AdamW arithmetic in fp32, ordered like torch's single-tensor AdamW so trajectories agree closely.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel_for.h"
#include "kernels/math/adamw.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOE_ADAMW_X86 1
#endif

namespace moe {

namespace {

// The per-step constants of adamw_update, in fp32 like torch (kernels/math/adamw.h).
struct AdamWConsts : AdamWStep {
  AdamWConsts(const AdamWHyper& hp, long t) : AdamWStep(adamw_step_consts(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, t)) {}
};

// n elements of adamw_element (kernels/math/adamw.h, shared with the CUDA kernel). The vector lanes (SSE, or AVX2 without FMA)
// do the same IEEE operations in the same order as the scalar tail, so every element gets the same bits.
void adamw_scalar(float* p, const float* g, float* m, float* v, i64 i, i64 n, float decay, float gs,
                  const AdamWConsts& c) {
  for (; i < n; ++i) adamw_element(p[i], g[i], m[i], v[i], decay, gs, c);
}

#if defined(MOE_ADAMW_X86)
void adamw_sse(float* p, const float* g, float* m, float* v, i64 n, float decay, float gs, const AdamWConsts& c) {
  const __m128 vdecay = _mm_set1_ps(decay), vgs = _mm_set1_ps(gs), vb1c = _mm_set1_ps(c.b1c), vb2 = _mm_set1_ps(c.b2),
               vb2c = _mm_set1_ps(c.b2c), vbs = _mm_set1_ps(c.bias2_sqrt), veps = _mm_set1_ps(c.eps),
               vnstep = _mm_set1_ps(-c.step_size);
  i64 i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m128 gi = _mm_mul_ps(_mm_loadu_ps(g + i), vgs);
    const __m128 pi = _mm_mul_ps(_mm_loadu_ps(p + i), vdecay);
    __m128 mi = _mm_loadu_ps(m + i);
    mi = _mm_add_ps(mi, _mm_mul_ps(vb1c, _mm_sub_ps(gi, mi)));
    const __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), vb2), _mm_mul_ps(_mm_mul_ps(vb2c, gi), gi));
    const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), vbs), veps);
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
    _mm_storeu_ps(p + i, _mm_add_ps(pi, _mm_mul_ps(vnstep, _mm_div_ps(mi, denom))));
  }
  adamw_scalar(p, g, m, v, i, n, decay, gs, c);
}

// AVX2 without FMA (GCC would contract mul+add into FMA under an FMA target and change the rounding).
__attribute__((target("avx2"))) void adamw_avx2(float* p, const float* g, float* m, float* v, i64 n, float decay,
                                                float gs, const AdamWConsts& c) {
  const __m256 vdecay = _mm256_set1_ps(decay), vgs = _mm256_set1_ps(gs), vb1c = _mm256_set1_ps(c.b1c),
               vb2 = _mm256_set1_ps(c.b2), vb2c = _mm256_set1_ps(c.b2c), vbs = _mm256_set1_ps(c.bias2_sqrt),
               veps = _mm256_set1_ps(c.eps), vnstep = _mm256_set1_ps(-c.step_size);
  i64 i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), vgs);
    const __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), vdecay);
    __m256 mi = _mm256_loadu_ps(m + i);
    mi = _mm256_add_ps(mi, _mm256_mul_ps(vb1c, _mm256_sub_ps(gi, mi)));
    const __m256 vi =
        _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), vb2), _mm256_mul_ps(_mm256_mul_ps(vb2c, gi), gi));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), vbs), veps);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_mul_ps(vnstep, _mm256_div_ps(mi, denom))));
  }
  adamw_scalar(p, g, m, v, i, n, decay, gs, c);
}

void adamw_kernel(float* p, const float* g, float* m, float* v, i64 n, float decay, float gs, const AdamWConsts& c) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2)
    adamw_avx2(p, g, m, v, n, decay, gs, c);
  else
    adamw_sse(p, g, m, v, n, decay, gs, c);
}
#else
void adamw_kernel(float* p, const float* g, float* m, float* v, i64 n, float decay, float gs, const AdamWConsts& c) {
  adamw_scalar(p, g, m, v, 0, n, decay, gs, c);
}
#endif

// Elements per parallel work item of adamw_update_pieces.
constexpr i64 kAdamBlock = 16384;

}  // namespace

// contract: C5.adamw
void adamw_update(float* p, const float* g, float* m, float* v, i64 n, const AdamWHyper& hp, long t) {
  const AdamWConsts c(hp, t);
  const i64 nb = (n + kAdamBlock - 1) / kAdamBlock;
  parallel_for_above(nb, 1, [&](i64 b) {
    const i64 i0 = b * kAdamBlock, k = std::min(n - i0, kAdamBlock);
    adamw_kernel(p + i0, g + i0, m + i0, v + i0, k, c.decay, 1.f, c);
  });
}

void adamw_update_pieces(const std::vector<AdamWPiece>& pieces, const AdamWHyper& hp, long t, float grad_scale) {
  const AdamWConsts c(hp, t);
  // Work items of at most kAdamBlock elements over all pieces, one parallel loop.
  struct Item {
    const AdamWPiece* piece;
    i64 off, n;
  };
  thread_local std::vector<Item> items;  // the caller's; reused across steps
  items.clear();
  for (const AdamWPiece& pc : pieces)
    for (i64 o = 0; o < pc.n; o += kAdamBlock) items.push_back({&pc, o, std::min(pc.n - o, kAdamBlock)});
  const Item* it = items.data();
  const i64 ni = i64(items.size());
#pragma omp parallel for schedule(static)
  for (i64 k = 0; k < ni; ++k) {
    const AdamWPiece& pc = *it[k].piece;
    const i64 o = it[k].off;
    adamw_kernel(pc.p + o, pc.g + o, pc.m + o, pc.v + o, it[k].n, pc.decay ? c.decay : c.nodecay, grad_scale, c);
  }
}

// contract: C5.clip
// The reduction order of kernels/math/adamw.h (kSqBlock blocks of kSqLanes interleaved double lanes, partials added
// serially): the same bits at any thread count and on the CUDA backend.
double grad_sq_sum(const float* g, i64 n) {
  constexpr i64 kBlock = kSqBlock;
  const i64 nb = (n + kBlock - 1) / kBlock;
  thread_local std::vector<double> part;
  part.resize(size_t(nb));
  double* pv = part.data();  // the caller's buffer: worker threads have their own thread_local instances
#pragma omp parallel for schedule(static)
  for (i64 b = 0; b < nb; ++b) {
    const i64 i0 = b * kBlock, i1 = std::min(n, (b + 1) * kBlock);
    double acc[kSqLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    i64 i = i0;
    for (; i + kSqLanes <= i1; i += kSqLanes)
      for (int u = 0; u < kSqLanes; ++u) acc[u] = sq_lane_add(acc[u], g[i + u]);
    for (int u = 0; i < i1; ++i, ++u) acc[u] = sq_lane_add(acc[u], g[i]);
    pv[b] = sq_lanes_combine(acc);
  }
  double s = 0;
  for (i64 b = 0; b < nb; ++b) s += part[b];
  return s;
}

double clip_coef(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  const double c = max_norm / (norm + 1e-6);
  return c < 1.0 ? c : 1.0;
}

// contract: C5.lr
double lr_at(const TrainConfig& t, int s) {
  if (s < t.warmup_steps) return t.lr * double(s + 1) / double(t.warmup_steps);
  if (t.schedule == Schedule::Constant) return t.lr;
  const double span = std::max(1, t.steps - t.warmup_steps);
  const double pi = 3.14159265358979323846;
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + std::cos(pi * double(s - t.warmup_steps) / span));
}

}  // namespace moe
