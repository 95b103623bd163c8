// Owns the checkpoint → HF export: verify, read the logical tensors on one process, write with save_hf_model.
#include "io/hf_export.h"

#include <spdlog/spdlog.h>

#include "comm/communicator.h"
#include "config/config.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "model/param_table.h"

namespace moe {

void export_checkpoint_hf(const std::string& checkpoint, const std::string& out_dir, const HfSaveOptions& opt) {
  const std::string why = verify_checkpoint(checkpoint);
  MT_INPUT_CHECK(why.empty(), "moe-export: ", checkpoint, " is not a usable checkpoint: ", why);
  const CheckpointMeta meta = read_checkpoint_meta(checkpoint);
  const Config cfg = parse_config(meta.config_yaml, {}, checkpoint + ":/meta/config");
  const ParamTable table = build_param_table(cfg.model);
  std::vector<float> params(size_t(table.total_numel()), 0.f);
  std::vector<TensorDecl> decl;
  std::vector<TensorPiece> pieces;
  for (const ParamInfo& p : table.entries()) {
    decl.push_back({p.name, p.shape});
    pieces.push_back({p.name, 0, p.numel, params.data() + p.offset});
  }
  auto self = make_self_communicator();
  const std::string problem = read_checkpoint_tensors(checkpoint, *self, decl, pieces, {}, {});
  MT_INPUT_CHECK(problem.empty(), "moe-export: ", checkpoint, ": ", problem);
  HfSaveOptions o = opt;
  o.meta = hf_export_meta(cfg);
  save_hf_model(out_dir, cfg.model, table, params.data(), o);
}

HfExportMeta hf_export_meta(const Config& cfg) {
  HfExportMeta meta;
  const bool moe_src = !cfg.model_init_from.empty();
  const std::string dir = moe_src ? cfg.model_init_from : cfg.upcycle.from;
  if (!dir.empty() && is_regular_file(dir + "/config.json")) {
    meta.source = moe_src ? HfMetaSource::MoeModel : HfMetaSource::DenseModel;
    meta.source_dir = dir;
    spdlog::info("HF export: config.json metadata (token ids, max_position_embeddings{}) and generation/tokenizer "
                 "files from {}{}",
                 moe_src ? ", rope and other non-architecture keys" : "", dir,
                 moe_src ? " (model.init_from)" : " (upcycle.from)");
  } else {
    const bool mix = cfg.model.arch == Arch::Mixtral;
    if (cfg.data.tokenizer.empty())
      spdlog::info("HF export: {}; config.json gets the {} class defaults (bos_token_id {}, eos_token_id {}, "
                   "max_position_embeddings {}) and no generation/tokenizer files (set data.tokenizer to add them)",
                   dir.empty() ? "the run did not load an HF model" : dir + "/config.json no longer exists",
                   mix ? "MixtralConfig" : "Qwen3MoeConfig", mix ? "1" : "null", mix ? "2" : "null",
                   mix ? 131072 : 32768);
    else
      spdlog::info("HF export: {}; config.json gets the {} class defaults (max_position_embeddings {})",
                   dir.empty() ? "the run did not load an HF model" : dir + "/config.json no longer exists",
                   mix ? "MixtralConfig" : "Qwen3MoeConfig", mix ? 131072 : 32768);
  }
  meta.tokenizer_dir = cfg.data.tokenizer;
  if (!meta.tokenizer_dir.empty())
    spdlog::info("HF export: tokenizer files, BOS/EOS ids and generation_config.json from {} (data.tokenizer)",
                 meta.tokenizer_dir);
  const double coef = cfg.moe.aux_loss_coef;
  meta.router_aux_loss_coef = cfg.moe.aux_loss_form == AuxForm::Hf ? coef : coef / cfg.model.top_k;
  spdlog::info("HF export: router_aux_loss_coef {} (moe.aux_loss_coef {}, aux_loss_form {})",
               *meta.router_aux_loss_coef, coef, cfg.moe.aux_loss_form == AuxForm::Hf ? "hf" : "layer: coef / top_k");
  return meta;
}

}  // namespace moe
