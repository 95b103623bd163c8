// Owns the oracle test tool: one step's grads (no update) or a short training, dumped as safetensors.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "config/config.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "train/runtime.h"
#include "train/trainer.h"

using namespace moe;

static void dump_grads(Trainer& tr, const std::string& out) {
  std::vector<float> logits;
  StepResult r = tr.compute_grads(0, &logits);
  const auto& t = tr.config().train;
  const i64 B = i64(t.micro_batch) * t.grad_accum, L = t.seq_len, V = tr.model_config().vocab_size;
  const int Lm = int(r.expert_load.size()), E = tr.model_config().num_experts;
  std::vector<float> loss{float(r.loss)}, aux{float(r.aux_loss)}, z{float(r.z_loss)};
  std::vector<float> dropped{r.pairs ? float(double(r.dropped) / double(r.pairs)) : 0.f};
  std::vector<float> load;
  for (const auto& l : r.expert_load)
    for (i64 c : l) load.push_back(float(c));
  std::vector<TensorToWrite> ts;
  ts.push_back({"logits", {B, L, V}, logits.data(), StDtype::F32});
  ts.push_back({"loss", {1}, loss.data(), StDtype::F32});
  ts.push_back({"aux_loss", {1}, aux.data(), StDtype::F32});
  ts.push_back({"z_loss", {1}, z.data(), StDtype::F32});
  ts.push_back({"dropped_frac", {1}, dropped.data(), StDtype::F32});
  if (Lm > 0) ts.push_back({"expert_load", {Lm, E}, load.data(), StDtype::F32});
  std::vector<std::string> names;
  names.reserve(tr.table().entries().size());
  // Host copies of the trainable entries' gradients (frozen entries of LoRA/QLoRA runs have none).
  std::vector<std::vector<float>> grads;
  grads.reserve(tr.table().entries().size());
  for (const ParamInfo& p : tr.table().entries()) {
    if (!p.trainable) continue;
    grads.emplace_back(size_t(p.numel));
    tr.state().entry_grads_to_host(p, grads.back().data());
    names.push_back("grad." + p.name);
    ts.push_back({names.back(), p.shape, grads.back().data(), StDtype::F32});
  }
  write_safetensors(out, ts, {{"format", "pt"}});
}

static void dump_train(Trainer& tr, const std::string& out) {
  tr.run();
  const std::vector<float> full = tr.gather_full_params();
  if (tr.rank() != 0) return;
  const ParamTable table = build_param_table(tr.model_config(), tr.lora());
  std::vector<TensorToWrite> ts;
  for (const ParamInfo& p : table.entries()) ts.push_back({p.name, p.shape, full.data() + p.offset, StDtype::F32});
  write_safetensors(out, ts, {{"format", "pt"}});
}

int main(int argc, char** argv) {
  CLI::App app{"moe-debug: dump gradients or a short training for oracle tests"};
  std::string mode, config_path, out;
  std::vector<std::string> sets;
  app.add_option("mode", mode, "grads | train")->required()->check(CLI::IsMember({"grads", "train"}));
  app.add_option("config", config_path, "YAML config")->required();
  app.add_option("--set", sets, "override a config key");
  app.add_option("--out", out, "output .safetensors")->required();
  std::string resume;
  app.add_option("--resume", resume, "load this checkpoint (auto or a path) before computing");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_pattern("[%H:%M:%S] %v");
  Runtime rt;
  try {
    rt = start_runtime();
    {
      Trainer tr(load_config(config_path, sets), *rt.world);
      if (!resume.empty()) tr.resume(resume);
      if (mode == "grads") dump_grads(tr, out);
      else dump_train(tr, out);
    }
    stop_runtime(rt);
    return 0;
  } catch (const Error& e) {
    return fail_run(rt, e.what(), e.exit_code());
  }
}
