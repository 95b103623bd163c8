// Owns the per-element arithmetic of NF4 dequantization (Nf4View: one NF4 tensor in a backend's memory) shared by the
// CPU quant table (src/backend/cpu/cpu_quant.cpp) and the CUDA kernel (kernels/cuda/nf4.cu).
#pragma once
#include <cstdint>

#include "core/bf16.h"
#include "core/dims.h"
#include "kernels/math/rounding.h"
#include "peft/nf4.h"

namespace moe {

// One NF4 tensor of n elements, layout exactly as Nf4Tensor (peft/nf4.h), every pointer in one backend's memory:
//   codes [ceil(n/2)]: element 2i in the high nibble, 2i+1 in the low one; block b = elements [64b, 64b+64).
//   dq off: absmax [ceil(n/64)] fp32.
//   dq on : qabsmax [ceil(n/64)] 8-bit codes into dynamic_map_signed(), absmax2 [ceil(ceil(n/64)/256)] fp32, and
//           offset (a host value): absmax of block b = dmap[qabsmax[b]]·absmax2[b/256] + offset.
struct Nf4View {
  i64 n = 0;
  Nf4DoubleQuant dq = Nf4DoubleQuant::off;
  const uint8_t* codes = nullptr;
  const float* absmax = nullptr;
  const uint8_t* qabsmax = nullptr;
  const float* absmax2 = nullptr;
  float offset = 0.0f;
};

namespace math {

// fp32 absmax of NF4 block b (bitsandbytes' dequantize_4bit: the double-quantized stats dequantized blockwise in fp32,
// product rounded, then the offset added, rounded; never fused). dmap: dynamic_map_signed()'s 256 values.
MT_HD inline float nf4_block_absmax(const Nf4View& q, i64 b, const float* dmap) {
  if (q.dq == Nf4DoubleQuant::off) return q.absmax[b];
  return rn::add(rn::mul(dmap[q.qabsmax[b]], q.absmax2[b / kNf4StatBlock]), q.offset);
}

// The 4-bit code of element i (high nibble first).
MT_HD inline int nf4_code_at(const uint8_t* codes, i64 i) {
  const uint8_t byte = codes[i / 2];
  return (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
}

// fp32 value of element i: nf4[code]·absmax of its block, one rounding (nf4_dequantize's value); stored as T
// rounded once (bf16) or exactly (float, double). nf4: nf4_code()'s 16 values.
template <typename T>
MT_HD inline T nf4_value(int code, float block_absmax, const float* nf4) {
  return T(rn::mul(nf4[code], block_absmax));
}

}  // namespace math
}  // namespace moe
