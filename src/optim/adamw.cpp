// Owns the AdamW arithmetic in fp32, ordered like torch's single-tensor AdamW so trajectories agree closely.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe {

// contract: C5.adamw
void adamw_update(float* p, const float* g, float* m, float* v, i64 n, const AdamWHyper& hp, long t) {
  const float decay = float(1.0 - hp.lr * hp.weight_decay);
  const float b1c = float(1.0 - hp.beta1);  // lerp weight
  const float b2 = float(hp.beta2), b2c = float(1.0 - hp.beta2);
  const double bias1 = 1.0 - std::pow(hp.beta1, double(t));
  const double bias2 = 1.0 - std::pow(hp.beta2, double(t));
  const float step_size = float(hp.lr / bias1);
  const float bias2_sqrt = float(std::sqrt(bias2));
  const float eps = float(hp.eps);
#pragma omp parallel for schedule(static)
  for (i64 i = 0; i < n; ++i) {
    p[i] *= decay;
    m[i] = m[i] + b1c * (g[i] - m[i]);  // torch lerp_(grad, 1 − β1) for weight < 0.5
    v[i] = v[i] * b2 + b2c * g[i] * g[i];
    const float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
    p[i] += -step_size * (m[i] / denom);
  }
}

// contract: C5.clip
// Fixed 4096-element blocks summed in parallel, then the block sums serially: the same bits at any thread count.
double grad_sq_sum(const float* g, i64 n) {
  constexpr i64 kBlock = 4096;
  const i64 nb = (n + kBlock - 1) / kBlock;
  thread_local std::vector<double> part;
  part.resize(size_t(nb));
  double* pv = part.data();  // the caller's buffer: worker threads have their own thread_local instances
#pragma omp parallel for schedule(static)
  for (i64 b = 0; b < nb; ++b) {
    double s = 0;
    for (i64 i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) s += double(g[i]) * double(g[i]);
    pv[b] = s;
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
