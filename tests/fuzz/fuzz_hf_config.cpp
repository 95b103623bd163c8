// Fuzz harness: any bytes as an HF config.json → read_hf_config / read_hf_extras, then the parameter table of the model.
#include <sys/stat.h>

#include "config/config.h"
#include "fuzz_common.h"
#include "io/hf_model.h"
#include "model/param_table.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = moe::fuzz::scratch_dir() + "/model";
    ::mkdir(d.c_str(), 0700);
    return d;
  }();
  moe::fuzz::write_scratch("model/config.json", data, size);
  return moe::fuzz::guarded([&] {
    (void)moe::read_hf_extras(dir);
    const moe::ModelConfig m = moe::read_hf_config(dir);
    // What the trainer and --dry-run do next with an accepted config (kept small enough to run often).
    if (static_cast<long long>(m.num_layers) * m.num_experts <= 256) {
      const moe::ParamTable t = moe::build_param_table(m);
      if (t.tensor_numel() <= 0) std::abort();
    }
  });
}
