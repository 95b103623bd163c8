// Owns the NF4 / 8-bit dynamic blockwise codecs of QLoRA base weights (see nf4.h for layouts).
#include "peft/nf4.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moe {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Floor on a tail block's absmax (the quantizer divides by it); fp32 value of 1e-38 (subnormal).
const float kAbsmaxFloor = static_cast<float>(1e-38);

// fp32 linspace as torch computes it on CPU: step = (end − start)/(steps − 1) in fp32, the first half as
// fma(step, i, start), the second half as fma(−step, steps − 1 − i, end). Used by the dynamic map only.
std::vector<float> linspace_f32(float start, float end, int steps) {
  std::vector<float> v(steps);
  const float step = (end - start) / static_cast<float>(steps - 1);
  for (int i = 0; i < steps; ++i)
    v[i] = i < steps / 2 ? std::fma(step, static_cast<float>(i), start)
                         : std::fma(-step, static_cast<float>(steps - 1 - i), end);
  return v;
}

// Nearest NF4 code of a scaled value s ∈ [−1, 1]: the number of midpoints (code[i] + code[i+1])/2 strictly below
// s, so a tie goes to the lower code (bitsandbytes' default-backend quantize_4bit: bucketize on the midpoints).
uint8_t nf4_nearest(float s) {
  static const std::array<float, 15> mid = [] {
    std::array<float, 15> m{};
    const auto& c = nf4_code();
    for (int i = 0; i < 15; ++i) m[i] = (c[i] + c[i + 1]) / 2.0f;
    return m;
  }();
  return static_cast<uint8_t>(std::lower_bound(mid.begin(), mid.end(), s) - mid.begin());
}

// bitsandbytes' CPU quantize_blockwise picks the 8-bit code through a 65536-entry table over [−1, 1]:
// entry i holds the number of map midpoints 0.5·(m[j] + m[j+1]) strictly below −1 + 2i/65535 (fp32), and a
// scaled value v is looked up at trunc((clamp(v) + 1)·0.5·65535 + 0.5). This is not always the nearest code;
// we follow it to stay bit-identical.
const std::vector<uint8_t>& dynamic_lut() {
  static const std::vector<uint8_t> lut = [] {
    const auto& m = dynamic_map_signed();
    float mid[255];
    for (int i = 0; i < 255; ++i) mid[i] = 0.5f * (m[i] + m[i + 1]);
    std::vector<uint8_t> t(65536);
    int j = 0;
    for (int i = 0; i < 65536; ++i) {
      const float val = -1.0f + (2.0f * static_cast<float>(i)) / 65535.0f;
      while (j < 255 && mid[j] < val) ++j;
      t[i] = static_cast<uint8_t>(j);
    }
    return t;
  }();
  return lut;
}

uint8_t dynamic_lookup(float v) {
  v = std::clamp(v, -1.0f, 1.0f);
  const float a = (v + 1.0f) * 0.5f;
  const float b = a * 65535.0f;
  const float c = b + 0.5f;
  return dynamic_lut()[static_cast<uint16_t>(c)];
}

}  // namespace

const std::array<float, 16>& nf4_code() {
  // QLoRA's NF4 table (normal quantiles, an exact zero, ±1), as fp32.
  static const std::array<float, 16> c = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
      0.7229568362236023f, 1.0f};
  return c;
}

const std::array<float, 256>& dynamic_map_signed() {
  // bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i = 0..6,
  // 2^i fraction values (midpoints of a linspace(0.1, 1, 2^i + 1)) scaled by 10^(i−6), both signs; plus 0 and 1.
  static const std::array<float, 256> map = [] {
    std::vector<float> d;
    for (int i = 0; i < 7; ++i) {
      const std::vector<float> b = linspace_f32(0.1f, 1.0f, (1 << i) + 1);
      const float scale = static_cast<float>(std::pow(10.0, i - 6));
      for (size_t k = 0; k + 1 < b.size(); ++k) {
        const float mean = (b[k] + b[k + 1]) / 2.0f;
        d.push_back(scale * mean);
        d.push_back(-scale * mean);
      }
    }
    d.push_back(0.0f);
    d.push_back(1.0f);
    MT_CHECK(d.size() == 256, "dynamic map has ", d.size(), " entries");
    std::sort(d.begin(), d.end());
    std::array<float, 256> a{};
    std::copy(d.begin(), d.end(), a.begin());
    return a;
  }();
  return map;
}

int64_t Nf4Tensor::bytes() const {
  const int64_t stats = dq == Nf4DoubleQuant::on
                            ? static_cast<int64_t>(qabsmax.size() + absmax2.size() * sizeof(float) + sizeof(float))
                            : static_cast<int64_t>(absmax.size() * sizeof(float));
  return static_cast<int64_t>(codes.size()) + stats;
}

// Matches quantize_blockwise on bitsandbytes' CPU backend (native kernel): absmax = max|x| per block; an all-zero
// block gets absmax 0 and codes 0; otherwise v = x·(1/absmax) looked up through dynamic_lut().
void quantize_blockwise_8bit(const float* x, int64_t n, int64_t block, uint8_t* codes, float* absmax) {
  const int64_t nb = ceil_div(n, block);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * block, hi = std::min(n, lo + block);
    float am = 0.0f;
    for (int64_t i = lo; i < hi; ++i) am = std::max(am, std::fabs(x[i]));
    absmax[b] = am;
    if (am == 0.0f) {
      std::fill(codes + lo, codes + hi, uint8_t{0});
      continue;
    }
    const float inv = 1.0f / am;
    for (int64_t i = lo; i < hi; ++i) codes[i] = dynamic_lookup(x[i] * inv);
  }
}

// Matches dequantize_blockwise (CPU): map[code] · absmax[block], fp32.
void dequantize_blockwise_8bit(const uint8_t* codes, const float* absmax, int64_t n, int64_t block, float* out) {
  const auto& m = dynamic_map_signed();
  for (int64_t i = 0; i < n; ++i) out[i] = m[codes[i]] * absmax[i / block];
}

// Matches functional.quantize_4bit(quant_type="nf4", blocksize=64) on the CPU (default-backend quantize_4bit):
// full blocks scale by x·(1/max(absmax, 1e-38)) and store the raw absmax; the tail block stores
// max(absmax, 1e-38) and scales by x/absmax; values clamped to [−1, 1]; compress_statistics=True adds
// offset = mean(absmax) and quantize_blockwise(absmax − offset, blocksize=256).
Nf4Tensor nf4_quantize(const float* x, int64_t n, Nf4DoubleQuant dq) {
  MT_CHECK(n >= 1, "nf4_quantize of an empty tensor");
  Nf4Tensor q;
  q.n = n;
  q.dq = dq;
  const int64_t nb = ceil_div(n, kNf4Block);
  std::vector<float> absmax(nb);
  std::vector<uint8_t> code(n + 1, uint8_t{7});  // the pad element of an odd n is 0.0 → code 7
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * kNf4Block, hi = std::min(n, lo + kNf4Block);
    float am = 0.0f;
    for (int64_t i = lo; i < hi; ++i) am = std::max(am, std::fabs(x[i]));
    const bool tail = hi - lo < kNf4Block;
    if (tail) {
      am = std::max(am, kAbsmaxFloor);
      for (int64_t i = lo; i < hi; ++i) code[i] = nf4_nearest(std::clamp(x[i] / am, -1.0f, 1.0f));
    } else {
      const float inv = 1.0f / std::max(am, kAbsmaxFloor);
      for (int64_t i = lo; i < hi; ++i) code[i] = nf4_nearest(std::clamp(x[i] * inv, -1.0f, 1.0f));
    }
    absmax[b] = am;
  }
  q.codes.resize(ceil_div(n, 2));
  for (int64_t p = 0; p < static_cast<int64_t>(q.codes.size()); ++p)
    q.codes[p] = static_cast<uint8_t>((code[2 * p] << 4) | code[2 * p + 1]);
  if (dq == Nf4DoubleQuant::off) {
    q.absmax = std::move(absmax);
    return q;
  }
  // offset: the fp32 mean of the absmax values, summed in double (torch sums in fp32 in its own order; the two
  // can differ in the last bit — the oracle test reports it).
  double sum = 0.0;
  for (float a : absmax) sum += a;
  q.offset = static_cast<float>(sum / static_cast<double>(nb));
  for (float& a : absmax) a -= q.offset;
  q.qabsmax.resize(nb);
  q.absmax2.resize(ceil_div(nb, kNf4StatBlock));
  quantize_blockwise_8bit(absmax.data(), nb, kNf4StatBlock, q.qabsmax.data(), q.absmax2.data());
  return q;
}

// Matches functional.dequantize_4bit: with double quant, absmax = dequantize_blockwise(qabsmax) + offset (fp32).
std::vector<float> nf4_block_absmax(const Nf4Tensor& q) {
  if (q.dq == Nf4DoubleQuant::off) return q.absmax;
  const int64_t nb = static_cast<int64_t>(q.qabsmax.size());
  std::vector<float> a(nb);
  dequantize_blockwise_8bit(q.qabsmax.data(), q.absmax2.data(), nb, kNf4StatBlock, a.data());
  for (float& v : a) v += q.offset;
  return a;
}

void nf4_dequantize(const Nf4Tensor& q, float* out) {
  const std::vector<float> absmax = nf4_block_absmax(q);
  const auto& c = nf4_code();
  for (int64_t i = 0; i < q.n; ++i) {
    const uint8_t byte = q.codes[i / 2];
    const uint8_t k = (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
    out[i] = c[k] * absmax[i / kNf4Block];
  }
}

}  // namespace moe
