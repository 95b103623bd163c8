// Owns the PEFT adapter test tool: HF base dir + PEFT adapter dir → our reader → adapters in both layouts + merged model.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "core/error.h"
#include "io/hf_model.h"
#include "io/peft_adapter.h"

using namespace moe;

int main(int argc, char** argv) {
  CLI::App app{"moe-peft-roundtrip: read a PEFT LoRA adapter, write it back in both layouts and merged into the base"};
  std::string model, adapter, out;
  app.add_option("--model", model, "base HF model directory (config.json + safetensors)")->required();
  app.add_option("--adapter", adapter, "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
      ->required();
  app.add_option("--out", out, "output: OUT/fused, OUT/per_expert (adapters), OUT/merged (HF model)")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    const ModelConfig m = read_hf_config(model);
    const AdapterSet a = read_peft_adapter(adapter, m);
    write_peft_adapter(out + "/fused", m, a, PeftLayout::Fused, model);
    write_peft_adapter(out + "/per_expert", m, a, PeftLayout::PerExpert, model);
    const ParamTable table = build_param_table(m);
    std::vector<float> params(size_t(table.total_numel()), 0.f);
    load_hf_weights(model, m, table, params.data());
    merge_adapter(params.data(), table, m, a);
    HfSaveOptions opt;
    opt.meta.source = HfMetaSource::MoeModel;
    opt.meta.source_dir = model;
    save_hf_model(out + "/merged", m, table, params.data(), opt);
    std::string targets;
    for (LoraProj p : a.targets) targets += std::string(targets.empty() ? "" : ",") + lora_proj_name(p);
    std::printf("adapter %s: r %d alpha %g rslora %d targets %s router %s, %zu tensors\n", adapter.c_str(), a.r,
                a.alpha, int(a.rslora == RsLora::On), targets.c_str(),
                a.router == RouterSave::Saved ? "saved" : "frozen", a.tensors.size());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "moe-peft-roundtrip: %s\n", e.what());
    return e.exit_code();
  }
}
