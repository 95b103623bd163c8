// Owns how the model reaches parameters and gradients unit by unit (flat buffers, or ZeRO-3 gathered shards).
#pragma once
#include "core/bf16.h"
#include "model/param_table.h"

namespace moe {

// The model calls these in execution order; a ZeRO-3 implementation gathers on params(), frees on
// release(), and reduce-scatters on grads_done(). Pointers are unit bases: tensor = base + (offset − unit.begin).
// T is the compute copy of the weights (fp32, fp64, or the bf16 copy of the fp32 master weights); gradients
// are always accumulated in acc_t<T> (fp32 for bf16: the bf16 contract keeps weight gradients in fp32).
template <typename T>
class ParamAccess {
 public:
  using G = acc_t<T>;
  virtual ~ParamAccess() = default;
  enum class Direction { Forward, Backward };  // which unit comes next (for prefetch)
  virtual const T* params(int unit, Direction dir) = 0;
  virtual void release(int unit) { (void)unit; }
  virtual G* grads(int unit) = 0;
  virtual void grads_done(int unit) { (void)unit; }
};

// Every unit resident in one flat buffer (ZeRO 0–2, tests).
template <typename T>
class FlatParamAccess final : public ParamAccess<T> {
 public:
  using G = acc_t<T>;
  FlatParamAccess(const ParamTable& t, const T* params, G* grads) : t_(t), p_(params), g_(grads) {}
  const T* params(int u, typename ParamAccess<T>::Direction) override { return p_ + t_.units()[u].begin; }
  G* grads(int u) override { return g_ + t_.units()[u].begin; }

 private:
  const ParamTable& t_;
  const T* p_;
  G* g_;
};

}  // namespace moe
