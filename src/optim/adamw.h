// Owns AdamW (torch.optim.AdamW semantics), global-norm clipping and the LR schedule [C5.adamw, C5.clip, C5.lr].
#pragma once
#include "config/config.h"
#include "core/dims.h"

namespace moe {

struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
};

// One update at step t (1-based) of n elements; weight_decay already 0 for 1-D tensors. [C5.adamw]
void adamw_update(float* p, const float* g, float* m, float* v, i64 n, const AdamWHyper& hp, long t);

// Σ g² in double (combine shards before the sqrt). [C5.clip]
double grad_sq_sum(const float* g, i64 n);

// coef = min(1, max_norm / (norm + 1e-6)); 1 when max_norm == 0 (clipping disabled). [C5.clip]
double clip_coef(double norm, double max_norm);

// LR at 0-based step s. [C5.lr]
double lr_at(const TrainConfig& t, int s);

}  // namespace moe
