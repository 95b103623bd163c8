// Owns the NF4 codec of QLoRA base weights: 4-bit NormalFloat codes (block 64) with optional double quantization
// of the per-block absmax (8-bit dynamic map, block 256), bit-identical to bitsandbytes' CPU path.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace moe {

constexpr int64_t kNf4Block = 64;       // elements per NF4 block (one absmax each)
constexpr int64_t kNf4StatBlock = 256;  // absmax values per 8-bit block of the double quantization

enum class Nf4DoubleQuant { off, on };

// A flat fp32 tensor of n elements in NF4.
//   codes: ceil(n/2) bytes; element 2i in the HIGH nibble, 2i+1 in the LOW nibble; an odd n pads the last low
//          nibble with code 7 (the 0.0 entry). A code is an index into nf4_code().
//   nblocks = ceil(n/64); the last block may be short (tail).
//   off: absmax = nblocks fp32 per-block max|x| (a short tail's absmax is at least 1e-38).
//   on : qabsmax = nblocks 8-bit codes into dynamic_map_signed() of (absmax − offset), absmax2 = ceil(nblocks/256)
//        fp32 per-256-block max|absmax − offset|, offset = fp32 mean of the absmax values; absmax is left empty.
struct Nf4Tensor {
  int64_t n = 0;
  Nf4DoubleQuant dq = Nf4DoubleQuant::off;
  std::vector<uint8_t> codes;
  std::vector<float> absmax;
  std::vector<uint8_t> qabsmax;
  std::vector<float> absmax2;
  float offset = 0.0f;
  // Bytes of storage: codes + absmax (or qabsmax + absmax2 + offset).
  int64_t bytes() const;
};

// The 16 NF4 values (QLoRA's normal-quantile table), sorted ascending, code 7 = 0.0.
const std::array<float, 16>& nf4_code();
// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)), 256 values sorted ascending in [-1, 1].
const std::array<float, 256>& dynamic_map_signed();

// Quantizes x[0..n) (fp32, any finite values). n ≥ 1.
Nf4Tensor nf4_quantize(const float* x, int64_t n, Nf4DoubleQuant dq);
// Per-block fp32 absmax as dequantization uses it (nblocks values; decoded from the 8-bit stats when dq is on).
std::vector<float> nf4_block_absmax(const Nf4Tensor& q);
// Writes the n dequantized fp32 values to out: nf4_code()[code] · absmax[block].
void nf4_dequantize(const Nf4Tensor& q, float* out);

// 8-bit blockwise codec with the dynamic map (bitsandbytes' quantize_blockwise / dequantize_blockwise, CPU):
// codes[n], absmax[ceil(n/block)] = per-block max|x|.
void quantize_blockwise_8bit(const float* x, int64_t n, int64_t block, uint8_t* codes, float* absmax);
void dequantize_blockwise_8bit(const uint8_t* codes, const float* absmax, int64_t n, int64_t block, float* out);

}  // namespace moe
