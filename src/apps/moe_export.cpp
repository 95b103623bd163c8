// Owns the moe-export command line (DESIGN §6): checkpoint → Hugging Face directory.
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/hf_export.h"

int main(int argc, char** argv) {
  CLI::App app{"moe-export: write a moe-train checkpoint as a Hugging Face model directory"};
  std::string checkpoint, out, format = "hf", dtype = "fp32";
  bool merge = false, fused = false;
  double max_shard_gb = 5.0;
  app.add_option("checkpoint", checkpoint, "checkpoint file (step_<N>.h5)")->required();
  app.add_option("--out", out, "output directory")->required();
  app.add_option("--format", format, "hf (full model) or peft (adapters)")->check(CLI::IsMember({"hf", "peft"}));
  app.add_flag("--merge", merge, "with adapters: merge them into the base weights");
  app.add_option("--dtype", dtype, "tensor dtype: fp32 (default) or bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--max-shard-size", max_shard_gb, "shard above this many GB (with model.safetensors.index.json)")
      ->check([](const std::string& v) -> std::string {
        char* end = nullptr;
        const double gb = std::strtod(v.c_str(), &end);
        return end != v.c_str() && *end == '\0' && std::isfinite(gb) && gb * 1e9 >= 1 ? ""
                                                                                   : "must be a finite number of GB >= 1e-9";
      });
  app.add_flag("--fused-experts", fused, "write the transformers v5 fused expert tensors instead of per-expert ones");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  spdlog::set_pattern("[%H:%M:%S] %v");
  try {
    MT_INPUT_CHECK(format == "hf", "--format peft: this checkpoint holds a full model; adapter export comes with LoRA support");
    moe::HfSaveOptions opt;
    opt.dtype = dtype == "bf16" ? moe::StDtype::BF16 : moe::StDtype::F32;
    opt.fused_experts = fused;
    opt.max_shard_bytes = moe::i64(max_shard_gb * 1e9);
    (void)merge;
    moe::export_checkpoint_hf(checkpoint, out, opt);
    spdlog::info("exported {} -> {} ({}, {})", checkpoint, out, dtype, fused ? "fused experts" : "per-expert tensors");
    return 0;
  } catch (const moe::Error& e) {
    spdlog::error("{}", e.what());
    return e.exit_code();
  }
}
