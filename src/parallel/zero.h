// Owns parameter, gradient and AdamW state under ZeRO stages 0–3 (DESIGN §3 parallel/): sharding, reduction, update, gathering.
#pragma once
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "config/config.h"
#include "model/param_access.h"
#include "io/checkpoint.h"
#include "model/param_table.h"

namespace moe {

// Bytes held per rank, split into state that lives all run and working buffers (ZeRO-3 gathers).
struct StateBytes {
  i64 params = 0, grads = 0, optimizer = 0, working = 0;
  i64 state() const { return params + grads + optimizer; }
};

// Stage 0: everything replicated. 1: AdamW moments sharded. 2: + gradients reduce-scattered into shards.
// 3: + parameters sharded; each unit is all-gathered before use (next unit prefetched), freed after, and its
// gradients reduce-scattered when its backward is done.
// Dense segments are sharded over the world, expert segments over the expert-data-parallel group.
class ParamState {
 public:
  // table: this rank's table, padded for the groups (dense: world size, experts: edp size).
  ParamState(const ParamTable& table, int stage, Communicator& world, Communicator& edp, Communicator& ep);
  ~ParamState();

  // Sets every local parameter from a buffer in table layout (each rank keeps its shard under stage 3).
  void set_params(const std::vector<float>& local_full);
  // The local parameters in table layout (stage 3 gathers every unit). Collective under stage 3.
  std::vector<float> local_params();

  ParamAccess<float>& access();  // what the model reads and writes through
  std::vector<float>& flat_params();              // stages 0–2
  const std::vector<float>& flat_grads() const;   // stages 0–2 (full table layout, before reduction: local)
  void zero_grads();
  // After all micro-batches: sums gradients over their groups; returns the global L2 norm (each shard once).
  double reduce_grads();
  void scale_grads(float coef);
  // One AdamW update (t 1-based) of this rank's shard, then (stages 1–2) all-gathers the parameters.
  void adamw(const TrainConfig& t, double lr, long step);

  // Pieces of this rank's state for checkpoint I/O, as flat ranges of logical tensors.
  // Write: every element of every tensor belongs to exactly one rank. Read: what this rank must hold.
  enum class PieceUse { Write, Read };
  void checkpoint_pieces(PieceUse use, std::vector<TensorPiece>& model, std::vector<TensorPiece>& exp_avg,
                         std::vector<TensorPiece>& exp_avg_sq);
  // After a checkpoint read into the pieces: refresh derived copies (ZeRO-3 gather cache).
  void after_load();

  StateBytes bytes() const;
  int stage() const { return stage_; }

 private:
  struct Segment {
    int unit;
    bool expert;
    i64 begin, end;      // in table coordinates (padded)
    Communicator* group; // world (dense) or edp (experts)
    i64 chunk;           // elements per shard
    i64 mine;            // first element of this rank's chunk (table coordinates)
    i64 shard_off;       // offset of this chunk in the shard buffers
  };
  class Zero3Access;
  friend class Zero3Access;

  const ParamTable& table_;
  int stage_;
  Communicator& world_;
  Communicator& edp_;
  Communicator& ep_;
  std::vector<Segment> segs_;
  i64 shard_total_ = 0;
  std::vector<float> params_, grads_;       // full table layout (stages 0–2)
  std::vector<float> pshard_, gshard_;      // shard layout (pshard: stage 3; gshard: stages 2–3)
  std::vector<float> exp_avg_, exp_avg_sq_; // shard layout (stage 0: the whole table is "the shard")
  std::unique_ptr<FlatParamAccess<float>> flat_;
  std::unique_ptr<Zero3Access> z3_;
};

}  // namespace moe
