// Owns the quantized-weight group of the backend op table: NF4 dequantization of QLoRA base weights into T.
#pragma once
#include <memory>

#include "core/bf16.h"
#include "kernels/math/nf4.h"

namespace moe {

// Ops over quantized storage, producing T (float, double or bf16); pointers in the backend's memory, ordered on its
// stream like DenseOps. The CPU table and the CUDA one give the same bits (per-element math: kernels/math/nf4.h).
template <typename T>
class QuantOps {
 public:
  virtual ~QuantOps() = default;
  // out[q.n] = nf4_code()[code_i] · absmax(block of i) as fp32 (the value nf4_dequantize gives, bit-identical to
  // bitsandbytes' dequantize_4bit), stored as T (bf16: that fp32 rounded once to nearest-even). Layout: Nf4View.
  // Never allocates.
  virtual void nf4_dequantize(T* out, const Nf4View& q) = 0;
};

// The host table: OpenMP over blocks of kNf4Block elements.
template <typename T>
std::unique_ptr<QuantOps<T>> make_cpu_quant_ops();

}  // namespace moe
