// Owns how the model reaches parameters and gradients unit by unit (flat buffers, or ZeRO-3 gathered shards).
#pragma once
#include <type_traits>

#include "core/bf16.h"
#include "core/error.h"
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
  // The unit's values in acc_t<T> (valid between params() and release() of the unit): for float/double the same
  // pointer as params(); for bf16 the fp32 master values, which the model reads for the router weight and the
  // norm gains (DESIGN §8: those are not rounded).
  virtual const G* params_acc(int unit) = 0;
  virtual void release(int unit) { (void)unit; }
  virtual G* grads(int unit) = 0;
  virtual void grads_done(int unit) { (void)unit; }
};

// Every unit resident in one flat buffer (ZeRO 0–2, tests).
template <typename T>
class FlatParamAccess final : public ParamAccess<T> {
 public:
  using G = acc_t<T>;
  // params_acc: the acc_t<T> values in table layout (null: the params themselves, float/double only).
  FlatParamAccess(const ParamTable& t, const T* params, G* grads, const G* params_acc = nullptr)
      : t_(t), p_(params), g_(grads), pa_(params_acc ? params_acc : same(params)) {}
  const T* params(int u, typename ParamAccess<T>::Direction) override { return p_ + t_.units()[u].begin; }
  const G* params_acc(int u) override {
    MT_CHECK(pa_, "FlatParamAccess<bf16> needs the fp32 values (params_acc)");
    return pa_ + t_.units()[u].begin;
  }
  G* grads(int u) override { return g_ + t_.units()[u].begin; }

 private:
  const ParamTable& t_;
  static const G* same(const T* p) {
    if constexpr (std::is_same<T, G>::value) return p;
    else return nullptr;
  }
  const T* p_;
  G* g_;
  const G* pa_;
};

}  // namespace moe
