// Owns turning a moe-train checkpoint into a Hugging Face model directory (moe-export --format hf).
#pragma once
#include <string>

#include "config/config.h"
#include "io/hf_model.h"

namespace moe {

// Reads CHECKPOINT.h5 (any writer layout), writes DIR/config.json + safetensors (sharded with an index above
// opt.max_shard_bytes). The metadata comes from hf_export_meta(the checkpoint's /meta config), replacing
// opt.meta. BadInput for a damaged or incomplete checkpoint.
void export_checkpoint_hf(const std::string& checkpoint, const std::string& out_dir, const HfSaveOptions& opt);

// The export metadata of a run (logged at info level): source = model.init_from (MoE base config.json) or
// upcycle.from (dense: token ids, max_position_embeddings) when that directory still holds a config.json, else
// HF class defaults; router_aux_loss_coef = the coefficient trained with in HF's form: moe.aux_loss_coef for
// aux_loss_form hf, moe.aux_loss_coef / top_k for form layer (moe-train's per-layer aux is HF's pooled aux / k
// for one MoE layer).
HfExportMeta hf_export_meta(const Config& cfg);

}  // namespace moe
