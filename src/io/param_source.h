// Owns where a run's initial parameter values come from: model.init_from, upcycle.from, or the seeded init.
#pragma once
#include <memory>
#include <string>

#include "config/config.h"
#include "io/hf_model.h"
#include "io/upcycle.h"
#include "model/param_table.h"

namespace moe {

// Fills one unit of `table` at a time with the values a run of `cfg` starts from (contract C5.init):
//   model.init_from   → the HF safetensors (HfWeightReader), or `hf_dir` when given (moe-export --merge --base);
//   upcycle.from      → expert copies of the dense MLP (+ noise), fresh routers (UpcycleReader);
//   otherwise         → N(0, model.init_std) for matrices, ones for norms, drawn by Philox(train.seed, Init) at
//                       (element, name_stream(HF name)), so every layout draws the same values for a tensor.
// LoRA halves (is_lora_name) are left untouched: their init is peft/lora.h lora_init. The table must outlive this.
class ParamSource {
 public:
  ParamSource(const Config& cfg, const ParamTable& table, const std::string& hf_dir = "");
  // dst [table.units()[unit].size()] fp32, table layout relative to the unit's begin; padding left as is.
  // BadInput for an unreadable or non-finite source tensor (naming the file and tensor).
  void read_unit(int unit, float* dst) const;
  // "model.init_from DIR", "upcycle.from DIR" or "seeded init (train.seed N)", for log lines.
  const std::string& describe() const { return what_; }

 private:
  const Config& cfg_;
  const ParamTable& table_;
  std::unique_ptr<HfWeightReader> hf_;
  std::unique_ptr<UpcycleReader> up_;
  std::string what_;
};

}  // namespace moe
