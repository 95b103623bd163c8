// Owns turning a moe-train checkpoint into a Hugging Face model directory (moe-export --format hf).
#pragma once
#include <string>

#include "io/hf_model.h"

namespace moe {

// Reads CHECKPOINT.h5 (any writer layout), writes DIR/config.json + safetensors (sharded with an index above
// opt.max_shard_bytes). BadInput for a damaged or incomplete checkpoint.
void export_checkpoint_hf(const std::string& checkpoint, const std::string& out_dir, const HfSaveOptions& opt);

}  // namespace moe
