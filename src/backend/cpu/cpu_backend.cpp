// Owns make_cpu_backend<T>: the host backend table (CPU dense, MoE, optimizer and quant ops).
#include "backend/backend.h"
#include "backend/cpu/cpu_dense.h"

namespace moe {

template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend() {
  auto b = std::make_unique<Backend<T>>();
  b->space = MemSpace::Host;
  b->stream = Stream{};  // the CPU runs every op synchronously in call order
  b->mem = make_cpu_mem_ops();
  b->dense = make_cpu_dense_ops<T>();
  b->moe = make_cpu_moe_ops<T>();
  b->optim = make_cpu_optim_ops();
  b->quant = make_cpu_quant_ops<T>();
  return b;
}

template std::unique_ptr<Backend<float>> make_cpu_backend<float>();
template std::unique_ptr<Backend<double>> make_cpu_backend<double>();
template std::unique_ptr<Backend<bf16>> make_cpu_backend<bf16>();

}  // namespace moe
