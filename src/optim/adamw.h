// Owns AdamW (torch.optim.AdamW semantics), global-norm clipping and the LR schedule [C5.adamw, C5.clip, C5.lr].
#pragma once
#include <vector>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
};

// One update at step t (1-based) of n elements; weight_decay already 0 for 1-D tensors. [C5.adamw]
void adamw_update(float* p, const float* g, float* m, float* v, i64 n, const AdamWHyper& hp, long t);

// A contiguous range of one tensor for adamw_update_pieces: n elements of parameters, gradients and moments.
struct AdamWPiece {
  float* p;
  const float* g;
  float* m;
  float* v;
  i64 n;
  bool decay;  // hp.weight_decay applies (false for 1-D tensors)
};

// The update of adamw_update for every piece, in one parallel pass; each gradient is multiplied by grad_scale
// (the clipping coefficient, fp32 like torch's clip_grad_norm_) as it is read, g itself is left as it is.
// Per element the same fp32 operations in the same order as adamw_update (bitwise equal when grad_scale is 1).
void adamw_update_pieces(const std::vector<AdamWPiece>& pieces, const AdamWHyper& hp, long t, float grad_scale = 1.f);

// Σ g² in double (combine shards before the sqrt). [C5.clip]
double grad_sq_sum(const float* g, i64 n);

// coef = min(1, max_norm / (norm + 1e-6)); 1 when max_norm == 0 (clipping disabled). [C5.clip]
double clip_coef(double norm, double max_norm);

// LR at 0-based step s. [C5.lr]
double lr_at(const TrainConfig& t, int s);

}  // namespace moe
