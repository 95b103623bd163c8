// Owns moe-export of LoRA/QLoRA checkpoints: the adapter as a PEFT directory, or folded into the base (--merge).
#pragma once
#include <string>

#include "io/hf_model.h"
#include "io/peft_adapter.h"

namespace moe {

// Whether CHECKPOINT.h5 was written by a LoRA/QLoRA run (peft.method of its /meta config is lora or qlora). Reads
// /meta only (BadInput when it is missing or fails its checksum); the tensors are verified by the export itself.
bool checkpoint_is_peft(const std::string& checkpoint);

// Writes the adapters (and the trained routers, as PEFT modules_to_save) of a LoRA/QLoRA checkpoint to DIR in
// `layout` (docs/PEFT_LAYOUT.md); base_model_name_or_path = the run's model.init_from. BadInput for a full-model
// checkpoint or a damaged one.
void export_checkpoint_peft(const std::string& checkpoint, const std::string& out_dir, PeftLayout layout);

// Writes the merged full model W + scaling · B·A (ISSUE11 item 5) as an HF directory (save_hf_model with opt;
// metadata and side files as export_checkpoint_hf). The base linears come from `base_dir` when given, else from the
// run's own source (model.init_from, upcycle.from or the seeded init, io/param_source.h); for QLoRA they are
// NF4-round-tripped (nf4_quantize/nf4_dequantize with the run's peft.double_quant, each tensor on its own: the
// values the run trained against, in fp32). Embeddings, norms, lm_head and routers come from the checkpoint; a
// base whose frozen tensors differ from the checkpoint's is not the run's base → BadInput naming the tensor.
void export_checkpoint_merged(const std::string& checkpoint, const std::string& out_dir, const std::string& base_dir,
                              const HfSaveOptions& opt);

}  // namespace moe
