// Owns BaseWeights<T> (see base_weights.h): storage plan, upload (dense rounding or NF4 quantization) and the
// per-unit view.
#include "peft/base_weights.h"

#include <algorithm>

#include "core/error.h"

namespace moe {
namespace {

i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }

// Storage sizes of one NF4 entry of n elements (Nf4Tensor's layout).
struct Nf4Sizes {
  i64 codes, blocks, blocks2;
  explicit Nf4Sizes(i64 n) : codes(ceil_div(n, 2)), blocks(ceil_div(n, kNf4Block)), blocks2(ceil_div(blocks, kNf4StatBlock)) {}
  i64 bytes(Nf4DoubleQuant dq) const {
    return codes + (dq == Nf4DoubleQuant::on ? blocks + 4 * blocks2 + 4 : 4 * blocks);
  }
};

i64 elem_bytes(DType t) {
  MT_CHECK(t == DType::F32 || t == DType::F64 || t == DType::BF16, "BaseWeights: T must be f32, f64 or bf16, not ",
           dtype_name(t));
  return dtype_bytes(t, 1);
}

i64 largest_unit(const ParamTable& base) {
  i64 m = 0;
  for (const ParamUnit& u : base.units()) m = std::max(m, u.size());
  return m;
}

i64 nf4_stored_bytes(const ParamTable& base, Nf4DoubleQuant dq) {
  i64 b = 0;
  for (const ParamInfo& e : base.entries())
    if (e.numel > 0) b += Nf4Sizes(e.numel).bytes(dq);
  return b;
}

}  // namespace

template <typename T>
i64 BaseWeights<T>::plan_bytes(const ParamTable& base, BaseStorage kind, Nf4DoubleQuant dq, DType t) {
  const i64 eb = elem_bytes(t);
  if (kind == BaseStorage::Dense) return base.total_numel() * eb;
  return nf4_stored_bytes(base, dq) + largest_unit(base) * eb;
}

template <typename T>
BaseWeights<T>::BaseWeights(const ParamTable& base, BaseStorage kind, Nf4DoubleQuant dq, MemOps& mem,
                            QuantOps<T>* quant)
    : table_(base), kind_(kind), dq_(dq), mem_(mem), quant_(quant) {
  for (const ParamInfo& e : table_.entries())
    MT_CHECK(e.kind == StorageKind::Dense && e.dtype == DType::F32, "BaseWeights: base entry ", e.name,
             " must be a dense fp32 shape");
  if (kind_ == BaseStorage::Dense) {
    dense_ = Buffer<T>(mem_, table_.total_numel(), "LoRA base weights");
    stored_bytes_ = table_.total_numel() * i64(sizeof(T));
    return;
  }
  if (!quant_) {
    MT_CHECK(mem_.space() == MemSpace::Host, "BaseWeights: NF4 on device memory needs the backend's quant table");
    own_quant_ = make_cpu_quant_ops<T>();
    quant_ = own_quant_.get();
  }
  const auto& units = table_.units();
  entries_.resize(units.size());
  gaps_.resize(units.size());
  i64 codes = 0, blocks = 0, blocks2 = 0;
  for (const ParamInfo& e : table_.entries()) {
    if (e.numel == 0) continue;
    MT_CHECK(e.unit >= 0 && e.unit < int(units.size()), "BaseWeights: entry ", e.name, " outside the units");
    const Nf4Sizes s(e.numel);
    Nf4Entry r;
    r.rel = e.offset - units[size_t(e.unit)].begin;
    r.n = e.numel;
    r.code_off = codes;
    r.block_off = blocks;
    r.block2_off = blocks2;
    entries_[size_t(e.unit)].push_back(r);
    codes += s.codes;
    blocks += s.blocks;
    blocks2 += s.blocks2;
  }
  for (size_t u = 0; u < units.size(); ++u) {
    auto& es = entries_[u];
    std::sort(es.begin(), es.end(), [](const Nf4Entry& a, const Nf4Entry& b) { return a.rel < b.rel; });
    i64 at = 0;
    for (const Nf4Entry& r : es) {
      if (r.rel > at) gaps_[u].push_back({at, r.rel});
      at = std::max(at, r.rel + r.n);
    }
    if (units[u].size() > at) gaps_[u].push_back({at, units[u].size()});
  }
  codes_ = Buffer<uint8_t>(mem_, codes, "QLoRA base NF4 codes");
  if (dq_ == Nf4DoubleQuant::on) {
    qabsmax_ = Buffer<uint8_t>(mem_, blocks, "QLoRA base NF4 qabsmax");
    absmax2_ = Buffer<float>(mem_, blocks2, "QLoRA base NF4 absmax2");
  } else {
    absmax_ = Buffer<float>(mem_, blocks, "QLoRA base NF4 absmax");
  }
  slot_ = Buffer<T>(mem_, largest_unit(table_), "QLoRA dequantization slot");
  stored_bytes_ = nf4_stored_bytes(table_, dq_);
  slot_bytes_ = slot_.size() * i64(sizeof(T));
}

template <typename T>
void BaseWeights<T>::set_unit(int unit, const float* values) {
  const auto& units = table_.units();
  MT_CHECK(unit >= 0 && unit < int(units.size()), "BaseWeights::set_unit: unit ", unit, " of ", units.size());
  const ParamUnit& u = units[size_t(unit)];
  if (kind_ == BaseStorage::Dense) {
    if (u.size() == 0) return;
    std::vector<T> t(values, values + u.size());  // T(float): rounded once (bf16 nearest-even), exact otherwise
    mem_.to_backend(dense_.data() + u.begin, t.data(), u.size() * i64(sizeof(T)));
    return;
  }
  if (slot_unit_ == unit) slot_unit_ = -1;
  for (Nf4Entry& r : entries_[size_t(unit)]) {
    const Nf4Tensor q = nf4_quantize(values + r.rel, r.n, dq_);
    mem_.to_backend(codes_.data() + r.code_off, q.codes.data(), i64(q.codes.size()));
    if (dq_ == Nf4DoubleQuant::on) {
      mem_.to_backend(qabsmax_.data() + r.block_off, q.qabsmax.data(), i64(q.qabsmax.size()));
      mem_.to_backend(absmax2_.data() + r.block2_off, q.absmax2.data(), i64(q.absmax2.size() * sizeof(float)));
      r.offset = q.offset;
    } else {
      mem_.to_backend(absmax_.data() + r.block_off, q.absmax.data(), i64(q.absmax.size() * sizeof(float)));
    }
  }
}

template <typename T>
const T* BaseWeights<T>::unit(int unit) {
  const auto& units = table_.units();
  MT_CHECK(unit >= 0 && unit < int(units.size()), "BaseWeights::unit: unit ", unit, " of ", units.size());
  if (kind_ == BaseStorage::Dense) return dense_.data() + units[size_t(unit)].begin;
  if (slot_unit_ == unit) return slot_.data();
  for (const Nf4Entry& r : entries_[size_t(unit)]) {
    Nf4View v;
    v.n = r.n;
    v.dq = dq_;
    v.codes = codes_.data() + r.code_off;
    if (dq_ == Nf4DoubleQuant::on) {
      v.qabsmax = qabsmax_.data() + r.block_off;
      v.absmax2 = absmax2_.data() + r.block2_off;
      v.offset = r.offset;
    } else {
      v.absmax = absmax_.data() + r.block_off;
    }
    quant_->nf4_dequantize(slot_.data() + r.rel, v);
  }
  // Padding between entries reads as zeros whatever unit the slot held before.
  for (const auto& g : gaps_[size_t(unit)])
    mem_.zero(slot_.data() + g.first, (g.second - g.first) * i64(sizeof(T)));
  slot_unit_ = unit;
  return slot_.data();
}

template class BaseWeights<float>;
template class BaseWeights<double>;
template class BaseWeights<bf16>;

}  // namespace moe
