// Owns how the model reaches parameters and gradients unit by unit (flat buffers, or ZeRO-3 gathered shards).
#pragma once
#include <functional>
#include <type_traits>
#include <utility>

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
  // LoRA/QLoRA runs: the unit's frozen base linears in base-table layout (model/param_table.h build_base_table;
  // tensor = base + offset − unit.begin of that table), valid until release(unit). Full fine-tuning keeps them in
  // params() and never calls this.
  virtual const T* base(int unit) {
    (void)unit;
    MT_CHECK(false, "this parameter access holds no separate base weights");
    return nullptr;
  }
};

// A LoRA/QLoRA run's access: the state (adapters, router, norms, embeddings) from `inner` (ParamState), the frozen
// base linears from `base_unit(u)` (peft/base_weights.h BaseWeights::unit: dense T or dequantized NF4).
template <typename T>
class PeftParamAccess final : public ParamAccess<T> {
 public:
  using G = acc_t<T>;
  using Dir = typename ParamAccess<T>::Direction;
  PeftParamAccess(ParamAccess<T>& inner, std::function<const T*(int)> base_unit)
      : inner_(inner), base_unit_(std::move(base_unit)) {}
  const T* params(int u, Dir d) override { return inner_.params(u, d); }
  const G* params_acc(int u) override { return inner_.params_acc(u); }
  void release(int u) override { inner_.release(u); }
  G* grads(int u) override { return inner_.grads(u); }
  void grads_done(int u) override { inner_.grads_done(u); }
  const T* base(int u) override { return base_unit_(u); }

 private:
  ParamAccess<T>& inner_;
  std::function<const T*(int)> base_unit_;
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
