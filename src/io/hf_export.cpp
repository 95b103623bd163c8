// Owns the checkpoint → HF export: verify, read the logical tensors on one process, write with save_hf_model.
#include "io/hf_export.h"

#include "comm/communicator.h"
#include "config/config.h"
#include "core/error.h"
#include "io/checkpoint.h"
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
  save_hf_model(out_dir, cfg.model, table, params.data(), opt);
}

}  // namespace moe
