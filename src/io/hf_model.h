// Owns Hugging Face model directories (docs/DESIGN.md §4): config.json ↔ ModelConfig, safetensors weights ↔ ParamTable.
#pragma once
#include <optional>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "io/safetensors.h"
#include "model/param_table.h"

namespace moe {

// DIR/config.json → ModelConfig. model_type must be "mixtral" or "qwen3_moe". Accepts both transformers
// generations' spellings (torch_dtype/dtype, rope_theta/rope_parameters.rope_theta,
// num_local_experts/num_experts). A missing required key or a bad value → BadInput naming config.json
// and the key.
ModelConfig read_hf_config(const std::string& dir);

// Keys of DIR/config.json that moe-train does not take from the model but reports (for logging).
struct HfExtras {
  std::string model_type;
  std::string dtype;                              // torch_dtype / dtype, "" when absent
  std::optional<double> router_aux_loss_coef;
  std::optional<double> router_jitter_noise;
  std::optional<bool> output_router_logits;
};
HfExtras read_hf_extras(const std::string& dir);

// Fills every entry of `table` in params [table.total_numel()] fp32 from DIR/model.safetensors or the
// shards named by DIR/model.safetensors.index.json (weight_map). Converts F32/BF16/F16/F64; checks shapes;
// accepts per-expert (v4) and fused (v5: mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I],
// with or without ".weight"; Mixtral router/experts under "mlp." instead of "block_sparse_moe.") layouts.
// Extra tensors in the files are ignored. Missing tensors → BadInput listing up to 5 names.
// (HfWeightReader over every unit.)
void load_hf_weights(const std::string& dir, const ModelConfig& m, const ParamTable& table, float* params);

// Where each tensor of an HF model directory lives: model.safetensors, or the index and its shards (the
// index decides which shard holds a tensor). Files stay mapped while this lives.
struct WeightSource {
  std::deque<SafetensorsFile> files;
  std::unordered_map<std::string, const TensorEntry*> by_name;
  std::unordered_map<std::string, const SafetensorsFile*> file_of;
  std::string desc;  // for messages

  const TensorEntry* find(const std::string& n) const {
    auto it = by_name.find(n);
    return it == by_name.end() ? nullptr : it->second;
  }
};
// BadInput naming the directory when neither layout is there or the index is inconsistent.
void open_weights(const std::string& dir, WeightSource& src);

// load_hf_weights staged one table unit at a time (start-up memory: one unit buffer, not the whole table).
// The constructor opens DIR once, matches every entry of `table` to its tensor and runs every name, shape,
// dtype and missing-tensor check, with load_hf_weights's messages; read_unit then converts the tensors of one
// unit. Files stay mapped and `table` must stay alive while this lives.
class HfWeightReader {
 public:
  HfWeightReader(const std::string& dir, const ModelConfig& m, const ParamTable& table);
  // Fills the entries of table.units()[unit] in dst [that unit's size()], table layout relative to the unit's
  // begin (padding left as is). A tensor holding a non-finite value → BadInput naming its file and name.
  void read_unit(int unit, float* dst) const;

 private:
  struct Copy {
    TensorEntry src;
    i64 offset;                // of the table entry it fills
    const std::string* param;  // that entry's name
  };
  const ParamTable& table_;
  WeightSource src_;
  std::vector<std::vector<Copy>> copies_;  // [unit], in table entry order
};

// Where an exported config.json takes the keys that are not the architecture (token ids, max_position_embeddings,
// rope_scaling, output_router_logits, ...) and which side files it copies (generation_config.json, tokenizer files).
enum class HfMetaSource {
  None,        // HF class defaults
  MoeModel,    // source_dir is the Mixtral/Qwen3-MoE dir the run loaded (model.init_from): its config.json is the base
  DenseModel,  // source_dir is the dense dir the run upcycled (upcycle.from): token ids and max_position_embeddings
};
struct HfExportMeta {
  HfMetaSource source = HfMetaSource::None;
  std::string source_dir;
  // router_aux_loss_coef to write (the HF-form coefficient the run trained with); absent: the source's, else the
  // class default 0.001.
  std::optional<double> router_aux_loss_coef;
  // data.tokenizer: the HF tokenizer directory the run's data was made with. Its tokenizer files (every side file but
  // generation_config.json) replace the source's; config.json and generation_config.json (the source's, or a new
  // one) get its BOS/EOS ids (tokenizer_config.json), so the export generates with transformers out of the box.
  std::string tokenizer_dir;
};

// The side files an export copies from the source dir when present: generation config, tokenizer, chat template.
extern const char* const kHfSideFiles[];

struct HfSaveOptions {
  StDtype dtype = StDtype::F32;   // tensor dtype in model.safetensors (and torch_dtype / dtype in config.json)
  bool fused_experts = false;     // write the v5 fused layout instead of per-expert (v4) tensors
  // Above this many bytes the weights are split into model-0000i-of-0000n.safetensors + index.json (0: one file).
  i64 max_shard_bytes = 0;
  HfExportMeta meta{};            // config.json metadata and side files (default: class defaults, no files)
};

// Writes DIR/config.json (everything transformers needs to rebuild the model), DIR/model.safetensors from
// params [table.total_numel()] and copies opt.meta's side files; creates DIR if needed. Default: fp32,
// per-expert names.
void save_hf_model(const std::string& dir, const ModelConfig& m, const ParamTable& table, const float* params,
                   const HfSaveOptions& opt = {});

// config.json content that save_hf_model writes (exposed for tests and moe-export): the architecture keys from m
// (sliding window in each class's spelling), dtype and torch_dtype, the rest from meta (see HfExportMeta). A
// source config.json that cannot be read → BadInput naming it.
std::string hf_config_json(const ModelConfig& m, StDtype dtype = StDtype::F32, const HfExportMeta& meta = {});

}  // namespace moe
