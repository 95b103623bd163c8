// Owns CpuQuantOps<T>: the host quant table (NF4 dequantization through kernels/math/nf4.h).
#include <algorithm>

#include "backend/quant_ops.h"

namespace moe {
namespace {

template <typename T>
class CpuQuantOps final : public QuantOps<T> {
 public:
  // One NF4 block per iteration (its absmax decoded once); blocks are independent, so any thread count gives the
  // same bits.
  void nf4_dequantize(T* out, const Nf4View& q) override {
    const float* nf4 = nf4_code().data();
    const float* dmap = dynamic_map_signed().data();
    const i64 nb = (q.n + kNf4Block - 1) / kNf4Block;
#pragma omp parallel for schedule(static) if (q.n > (i64(1) << 16))
    for (i64 b = 0; b < nb; ++b) {
      const float am = math::nf4_block_absmax(q, b, dmap);
      const i64 hi = std::min(q.n, (b + 1) * kNf4Block);
      for (i64 i = b * kNf4Block; i < hi; ++i) out[i] = math::nf4_value<T>(math::nf4_code_at(q.codes, i), am, nf4);
    }
  }
};

}  // namespace

template <typename T>
std::unique_ptr<QuantOps<T>> make_cpu_quant_ops() {
  return std::make_unique<CpuQuantOps<T>>();
}

template std::unique_ptr<QuantOps<float>> make_cpu_quant_ops<float>();
template std::unique_ptr<QuantOps<double>> make_cpu_quant_ops<double>();
template std::unique_ptr<QuantOps<bf16>> make_cpu_quant_ops<bf16>();

}  // namespace moe
