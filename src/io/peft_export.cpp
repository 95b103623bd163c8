// Owns the LoRA/QLoRA checkpoint → PEFT adapter / merged HF model exports.
#include "io/peft_export.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "comm/communicator.h"
#include "config/config.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/hf_export.h"
#include "io/param_source.h"
#include "io/peft_state.h"
#include "model/param_table.h"
#include "peft/lora.h"
#include "peft/nf4.h"

namespace moe {

namespace {

// A verified checkpoint's config, and for LoRA runs the state table's spec (r_gate_up from the stored shapes:
// a run continuing a transformers-4 adapter has gate_up rank 2r).
struct CheckpointRun {
  Config cfg;
  LoraSpec spec;
};

CheckpointRun open_run(const std::string& checkpoint) {
  const std::string why = verify_checkpoint(checkpoint);
  MT_INPUT_CHECK(why.empty(), "moe-export: ", checkpoint, " is not a usable checkpoint: ", why);
  const CheckpointMeta meta = read_checkpoint_meta(checkpoint);
  CheckpointRun run{parse_config(meta.config_yaml, {}, checkpoint + ":/meta/config"), {}};
  run.spec = resolve_lora_spec(run.cfg.peft, run.cfg.model);
  if (run.spec.active() && run.spec.gate_up_blocks() > 0) {
    for (int l = 0; l < run.cfg.model.num_layers; ++l) {
      if (!run.cfg.model.is_moe_layer(l)) continue;
      const std::string a = lora_name(expert_gate_up_name(run.cfg.model, l, 0), LoraPart::A);
      const std::vector<i64> shape = checkpoint_tensor_shape(checkpoint, a);
      MT_INPUT_CHECK(shape.size() == 2 && shape[0] >= 1, "moe-export: ", checkpoint, " has no adapter tensor ", a,
                     " although its config targets the experts");
      run.spec.r_gate_up = int(shape[0]);
      break;
    }
  }
  return run;
}

// The state table's /model values (no moments) on one process.
std::vector<float> read_state(const std::string& checkpoint, const ParamTable& table) {
  std::vector<float> v(size_t(table.total_numel()), 0.f);
  std::vector<TensorDecl> decl;
  std::vector<TensorPiece> pieces;
  for (const ParamInfo& p : table.entries()) {
    TensorDecl d{p.name, p.shape};
    d.moments = Moments::None;  // only /model is read
    decl.push_back(d);
    pieces.push_back({p.name, 0, p.numel, v.data() + p.offset});
  }
  auto self = make_self_communicator();
  const std::string problem = read_checkpoint_tensors(checkpoint, *self, decl, pieces, {}, {});
  MT_INPUT_CHECK(problem.empty(), "moe-export: ", checkpoint, ": ", problem);
  return v;
}

const char* method_name(PeftMethod m) { return m == PeftMethod::Qlora ? "QLoRA" : "LoRA"; }

}  // namespace

// /meta only (its own checksum): the export that follows verifies the tensors once.
bool checkpoint_is_peft(const std::string& checkpoint) {
  const CheckpointMeta meta = read_checkpoint_meta(checkpoint);
  return parse_config(meta.config_yaml, {}, checkpoint + ":/meta/config").peft.method != PeftMethod::Full;
}

void export_checkpoint_peft(const std::string& checkpoint, const std::string& out_dir, PeftLayout layout) {
  const CheckpointRun run = open_run(checkpoint);
  MT_INPUT_CHECK(run.spec.active(), "moe-export --format peft: ", checkpoint,
                 " holds a full model (peft.method: full), not adapters; export it with --format hf");
  const ParamTable table = build_param_table(run.cfg.model, run.spec);
  const std::vector<float> state = read_state(checkpoint, table);
  const AdapterSet a = adapter_set_from_state(state.data(), table, run.cfg.model, run.spec, run.cfg.peft);
  write_peft_adapter(out_dir, run.cfg.model, a, layout, run.cfg.model_init_from);
  spdlog::info("exported the {} adapter of {} -> {} (PEFT, {} layout: {} tensors{})", method_name(run.spec.method),
               checkpoint, out_dir, layout == PeftLayout::Fused ? "transformers 5 fused" : "transformers 4 per-expert",
               a.tensors.size(), a.router == RouterSave::Saved ? ", trained routers as modules_to_save" : "");
}

void export_checkpoint_merged(const std::string& checkpoint, const std::string& out_dir, const std::string& base_dir,
                              const HfSaveOptions& opt) {
  const CheckpointRun run = open_run(checkpoint);
  MT_INPUT_CHECK(run.spec.active(), "moe-export --merge: ", checkpoint,
                 " holds a full model (peft.method: full): there is no adapter to merge; drop --merge");
  const ModelConfig& m = run.cfg.model;
  const ParamTable state_table = build_param_table(m, run.spec);
  const std::vector<float> state = read_state(checkpoint, state_table);
  const AdapterSet a = adapter_set_from_state(state.data(), state_table, m, run.spec, run.cfg.peft);

  // The base: every tensor of the full table from the run's source (or base_dir), one unit at a time.
  const ParamTable full = build_param_table(m);
  std::vector<float> params(size_t(full.total_numel()), 0.f);
  {
    const ParamSource source(run.cfg, full, base_dir);
    spdlog::info("merge: base weights from {}", source.describe());
    for (size_t u = 0; u < full.units().size(); ++u)
      source.read_unit(int(u), params.data() + full.units()[u].begin);
  }
  // Frozen state tensors must be the base's (same run); the checkpoint's values are used either way.
  for (const ParamInfo& p : state_table.entries()) {
    if (is_lora_name(p.name)) continue;
    const ParamInfo& f = full.at(p.name);
    float* dst = params.data() + f.offset;
    const float* src = state.data() + p.offset;
    if (!p.trainable) {
      i64 diff = 0;
      for (i64 i = 0; i < p.numel; ++i) diff += std::memcmp(dst + i, src + i, sizeof(float)) != 0;
      MT_INPUT_CHECK(diff == 0, "moe-export --merge: the base (", base_dir.empty() ? "the run's source" : base_dir,
                     ") is not the one ", checkpoint, " was trained on: frozen tensor ", p.name, " differs in ", diff,
                     " of ", p.numel, " values");
    }
    std::memcpy(dst, src, size_t(p.numel) * sizeof(float));
  }
  // QLoRA trained against the NF4 codes of each base linear: merge into their dequantized values.
  if (run.spec.method == PeftMethod::Qlora) {
    const Nf4DoubleQuant dq = run.cfg.peft.double_quant ? Nf4DoubleQuant::on : Nf4DoubleQuant::off;
    const ParamTable base = build_base_table(m);
    for (const ParamInfo& b : base.entries()) {
      float* w = params.data() + full.at(b.name).offset;
      nf4_dequantize(nf4_quantize(w, b.numel, dq), w);
    }
    spdlog::info("merge: {} base linears NF4-round-tripped ({}), as the QLoRA run stored them", base.entries().size(),
                 run.cfg.peft.double_quant ? "double quant" : "no double quant");
  }
  merge_adapter(params.data(), full, m, a);
  HfSaveOptions o = opt;
  Config meta_cfg = run.cfg;  // config.json metadata and side files: from the base merged into
  if (!base_dir.empty()) meta_cfg.model_init_from = base_dir;
  o.meta = hf_export_meta(meta_cfg);
  save_hf_model(out_dir, m, full, params.data(), o);
  spdlog::info("merged the {} adapter of {} (scaling {}) into the base -> {}", method_name(run.spec.method),
               checkpoint, a.scaling(), out_dir);
}

}  // namespace moe
