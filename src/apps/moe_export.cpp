// Owns the moe-export command line (DESIGN §6): checkpoint → Hugging Face model, PEFT adapter, or merged model.
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/hf_export.h"
#include "io/peft_export.h"

int main(int argc, char** argv) {
  CLI::App app{"moe-export: write a moe-train checkpoint as a Hugging Face model, a PEFT adapter, or both merged"};
  std::string checkpoint, out, format = "hf", dtype = "fp32", layout = "fused", base;
  bool merge = false, fused = false;
  double max_shard_gb = 5.0;
  app.add_option("checkpoint", checkpoint, "checkpoint file (step_<N>.h5)")->required();
  app.add_option("--out", out, "output directory")->required();
  app.add_option("--format", format, "hf (full model, default) or peft (the adapter of a LoRA/QLoRA run)")
      ->check(CLI::IsMember({"hf", "peft"}));
  auto* layout_opt = app.add_option("--peft-layout", layout,
                                    "with --format peft: fused (transformers 5 + PEFT >= 0.18, default) or per-expert "
                                    "(transformers 4: one LoRA per expert Linear)")
                         ->check(CLI::IsMember({"fused", "per-expert"}));
  app.add_flag("--merge", merge, "LoRA/QLoRA checkpoint: fold the adapter into the base and write the full model");
  auto* base_opt = app.add_option("--base", base, "with --merge: the HF base model directory (default: the run's "
                                                  "model.init_from, upcycle.from or seeded init)");
  auto* dtype_opt = app.add_option("--dtype", dtype, "tensor dtype of a full model: fp32 (default) or bf16")
                        ->check(CLI::IsMember({"fp32", "bf16"}));
  auto* shard_opt =
      app.add_option("--max-shard-size", max_shard_gb, "shard above this many GB (with model.safetensors.index.json)")
          ->check([](const std::string& v) -> std::string {
            char* end = nullptr;
            const double gb = std::strtod(v.c_str(), &end);
            return end != v.c_str() && *end == '\0' && std::isfinite(gb) && gb * 1e9 >= 1
                       ? ""
                       : "must be a finite number of GB >= 1e-9";
          });
  auto* fused_opt =
      app.add_flag("--fused-experts", fused, "write the transformers v5 fused expert tensors instead of per-expert ones");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  spdlog::set_pattern("[%H:%M:%S] %v");
  try {
    const bool peft = format == "peft";
    MT_INPUT_CHECK(!layout_opt->count() || peft, "--peft-layout applies to --format peft only");
    MT_INPUT_CHECK(!base_opt->count() || merge, "--base applies to --merge only");
    MT_INPUT_CHECK(!(peft && merge), "--merge writes a full model: use it without --format peft");
    for (const CLI::Option* o : {dtype_opt, shard_opt, fused_opt})
      MT_INPUT_CHECK(!peft || !o->count(), o->get_name(), " applies to full models: a PEFT adapter is written as one "
                                            "fp32 adapter_model.safetensors");
    if (peft) {
      moe::export_checkpoint_peft(checkpoint, out, layout == "fused" ? moe::PeftLayout::Fused : moe::PeftLayout::PerExpert);
      return 0;
    }
    moe::HfSaveOptions opt;
    opt.dtype = dtype == "bf16" ? moe::StDtype::BF16 : moe::StDtype::F32;
    opt.fused_experts = fused;
    opt.max_shard_bytes = moe::i64(max_shard_gb * 1e9);
    if (merge) {
      moe::export_checkpoint_merged(checkpoint, out, base, opt);
    } else {
      MT_INPUT_CHECK(!moe::checkpoint_is_peft(checkpoint), checkpoint, " holds a LoRA/QLoRA adapter, not a full "
                     "model: --format peft writes the adapter, --merge writes base + adapter as a full model");
      moe::export_checkpoint_hf(checkpoint, out, opt);
    }
    spdlog::info("exported {} -> {} ({}, {})", checkpoint, out, dtype, fused ? "fused experts" : "per-expert tensors");
    return 0;
  } catch (const moe::Error& e) {
    spdlog::error("{}", e.what());
    return e.exit_code();
  }
}
