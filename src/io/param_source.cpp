// Owns ParamSource: the HF, upcycle or seeded values of a parameter table unit.
#include "io/param_source.h"

#include <algorithm>

#include "core/rng.h"
#include "peft/lora.h"  // is_lora_name

namespace moe {

ParamSource::ParamSource(const Config& cfg, const ParamTable& table, const std::string& hf_dir)
    : cfg_(cfg), table_(table) {
  const std::string dir = hf_dir.empty() ? cfg.model_init_from : hf_dir;
  if (!dir.empty()) {
    hf_ = std::make_unique<HfWeightReader>(dir, cfg.model, table);
    what_ = (hf_dir.empty() ? "model.init_from " : "") + dir;
  } else if (!cfg.upcycle.from.empty()) {
    up_ = std::make_unique<UpcycleReader>(cfg.upcycle, cfg.train.seed, cfg.model, table);
    what_ = "upcycle.from " + cfg.upcycle.from;
  } else {
    what_ = "seeded init (train.seed " + std::to_string(cfg.train.seed) + ")";
  }
}

void ParamSource::read_unit(int unit, float* dst) const {
  if (hf_) return hf_->read_unit(unit, dst);
  if (up_) return up_->read_unit(unit, dst);
  const Philox ph(cfg_.train.seed, RngPurpose::Init);
  const i64 begin = table_.units()[size_t(unit)].begin;
  for (const ParamInfo& p : table_.entries()) {
    if (p.unit != unit || is_lora_name(p.name)) continue;
    float* out = dst + (p.offset - begin);
    if (p.is_norm) {
      std::fill(out, out + p.numel, 1.f);
      continue;
    }
    const uint32_t stream = name_stream(p.name);
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < p.numel; ++i) out[i] = float(cfg_.model.init_std * ph.normal(uint64_t(i), stream, 0));
  }
}

}  // namespace moe
