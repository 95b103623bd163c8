// Owns how the model reaches parameters and gradients unit by unit (flat buffers, or ZeRO-3 gathered shards).
#pragma once
#include "model/param_table.h"

namespace moe {

// The model calls these in execution order; a ZeRO-3 implementation gathers on params(), frees on
// release(), and reduce-scatters on grads_done(). Pointers are unit bases: tensor = base + (offset − unit.begin).
template <typename T>
class ParamAccess {
 public:
  virtual ~ParamAccess() = default;
  enum class Direction { Forward, Backward };  // which unit comes next (for prefetch)
  virtual const T* params(int unit, Direction dir) = 0;
  virtual void release(int unit) { (void)unit; }
  virtual T* grads(int unit) = 0;
  virtual void grads_done(int unit) { (void)unit; }
};

// Every unit resident in one flat buffer (ZeRO 0–2, tests).
template <typename T>
class FlatParamAccess final : public ParamAccess<T> {
 public:
  FlatParamAccess(const ParamTable& t, const T* params, T* grads) : t_(t), p_(params), g_(grads) {}
  const T* params(int u, typename ParamAccess<T>::Direction) override { return p_ + t_.units()[u].begin; }
  T* grads(int u) override { return g_ + t_.units()[u].begin; }

 private:
  const ParamTable& t_;
  const T* p_;
  T* g_;
};

}  // namespace moe
