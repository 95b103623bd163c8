// Owns the per-element arithmetic of the optimizer passes (AdamW update, Σg² lanes, clipping scale), shared by the
// CPU pass (src/optim/adamw.cpp) and the CUDA kernels (kernels/cuda/adamw.cu) so both give the same bits.
#pragma once
#include <cmath>

#include "core/bf16.h"
#include "core/dims.h"
#include "kernels/math/rounding.h"

namespace moe {

// The per-step constants of AdamW at update t (1-based), rounded to fp32 like torch's single-tensor AdamW
// (docs/DESIGN.md [C5.adamw]): decay = 1 − lr·wd; b1c = 1 − β1 (the lerp weight); b2, b2c = 1 − β2;
// step_size = lr / (1 − β1^t); bias2_sqrt = √(1 − β2^t); eps. Host only (computed once per step in double).
struct AdamWStep {
  float decay, nodecay, b1c, b2, b2c, step_size, bias2_sqrt, eps;
};

inline AdamWStep adamw_step_consts(double lr, double beta1, double beta2, double eps, double weight_decay, long t) {
  AdamWStep c;
  c.decay = float(1.0 - lr * weight_decay);
  c.nodecay = 1.f;
  c.b1c = float(1.0 - beta1);
  c.b2 = float(beta2);
  c.b2c = float(1.0 - beta2);
  const double bias1 = 1.0 - std::pow(beta1, double(t));
  const double bias2 = 1.0 - std::pow(beta2, double(t));
  c.step_size = float(lr / bias1);
  c.bias2_sqrt = float(std::sqrt(bias2));
  c.eps = float(eps);
  return c;
}

// One element of AdamW [C5.adamw], g read as g·gs (gs: the clipping coefficient, fp32 like torch's
// clip_grad_norm_); decay is c.decay or c.nodecay (1-D tensors). In this order, each step rounded to fp32:
//   p ← p·decay; m ← m + b1c·(g − m) (torch's lerp_ for weight < 0.5); v ← v·β2 + (b2c·g)·g;
//   p ← p + (−step_size)·(m / (√v / bias2_sqrt + eps)).
MT_HD inline void adamw_element(float& p, float g, float& m, float& v, float decay, float gs, const AdamWStep& c) {
  const float gi = rn::mul(g, gs);
  const float pd = rn::mul(p, decay);
  const float mi = rn::add(m, rn::mul(c.b1c, rn::sub(gi, m)));
  const float vi = rn::add(rn::mul(v, c.b2), rn::mul(rn::mul(c.b2c, gi), gi));
  const float denom = rn::add(rn::div(rn::sqrt(vi), c.bias2_sqrt), c.eps);
  m = mi;
  v = vi;
  p = rn::add(pd, rn::mul(-c.step_size, rn::div(mi, denom)));
}

// Σg² reduction order [C5.clip] (the same on every backend and thread count): the n elements are cut into blocks of
// kSqBlock; inside block b, lane u (0..7) sums g[i]² in double for i = b·kSqBlock + u, +8, +16, … in that order
// (sq_lane_add), the block's partial is the lane tree sq_lanes_combine, and the partials are added serially in
// block order starting from 0.
constexpr i64 kSqBlock = 4096;
constexpr int kSqLanes = 8;

MT_HD inline double sq_lane_add(double acc, float g) { return rn::add(acc, rn::mul(double(g), double(g))); }

// ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)).
MT_HD inline double sq_lanes_combine(const double a[kSqLanes]) {
  return rn::add(rn::add(rn::add(a[0], a[1]), rn::add(a[2], a[3])), rn::add(rn::add(a[4], a[5]), rn::add(a[6], a[7])));
}

// x·coef, the clipping scale of a gradient element.
MT_HD inline float scale_element(float x, float coef) { return rn::mul(x, coef); }

}  // namespace moe
