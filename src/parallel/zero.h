// Owns parameter, gradient and AdamW state under ZeRO stages 0–3 (DESIGN §3 parallel/): sharding, reduction,
// update, gathering, the bf16 compute copy, and the sizing function the memory plan shares with the allocator.
#pragma once
#include <memory>
#include <utility>
#include <vector>

#include "backend/mem_ops.h"
#include "backend/optim_ops.h"
#include "comm/communicator.h"
#include "config/config.h"
#include "core/bf16.h"
#include "io/checkpoint.h"
#include "model/param_access.h"
#include "model/param_table.h"
#include "optim/adamw.h"

namespace moe {

// Bytes held per rank: state that lives all run, and working buffers (unit slots).
struct StateBytes {
  i64 params = 0;        // fp32 master weights: the local table (stages 0–2) or the shard (3)
  i64 grads = 0;         // fp32 gradients kept across the step: local table, trainable part, or trainable shard
  i64 optimizer = 0;     // AdamW m and v (fp32) of this rank's trainable shard
  i64 compute_copy = 0;  // bf16 copy of the weights (Precision::Bf16, stages 0–2: the local table; 3: none)
  i64 grad_slots = 0;    // unit gradient slots (fp32) the model writes into before they are reduced
  i64 working = 0;       // every working buffer: ZeRO-3 fp32 gather slots (+ bf16 slots) + grad_slots + pack buffers
  i64 state() const { return params + grads + optimizer + compute_copy; }
};

// Stage 0: everything replicated. 1: AdamW moments sharded. 2: + gradients reduce-scattered into shards, unit
// by unit during backward (grads_done), so no full gradient buffer exists. 3: + parameters sharded; each unit
// is all-gathered before use (next unit prefetched), freed after.
// Stages 2–3 overlap the gradient reduce-scatter with compute: grads_done(u) only STARTS the non-blocking
// reduce-scatters of unit u's segments (ireduce_scatter_sum); the slot stays in flight while the model writes the
// next unit into another slot (one slot more than the open units need). A request is waited, and this rank's chunk
// added into the gradient shard, when its slot is needed again, and at the latest by reduce_grads() / zero_grads();
// completions run in start order, so every shard element receives its additions in the same order as a blocking
// reduction would (bitwise the same results).
// Dense segments are sharded over the world, expert segments over the expert-data-parallel group.
// Frozen entries (ParamInfo::trainable false) have no gradient storage and no moments, are never reduced or
// updated, and are still gathered under ZeRO-3. Gradients of a unit the model writes land in a unit slot
// whenever the persistent gradient buffer is not the full local table (stages 2–3, or any frozen entry).
// Precision::Bf16 (DESIGN §8): the master, gradients and moments stay fp32; the model reads a bf16 copy
// round_bf16(master) of every parameter, plus the fp32 master values of each unit (params_acc: router weight and
// norm gains). Stages 0–2: the copy is a flat table refreshed after adamw(), set_params() and after_load();
// ZeRO-3: each unit's fp32 shards are gathered (as for fp32) and rounded into a bf16 unit slot.
// Memory: every buffer (parameters, gradients, shards, moments, bf16 copy, unit slots, gather slots) lives in the
// backend's memory space (MemOps), allocated once in the constructor; element passes go through OptimOps,
// copies and fills through MemOps, and the communicators move those buffers (their buffer_space() must be the
// MemOps space). Host code reads state only through the *_to_host/host-copy accessors below.
class ParamState {
 public:
  // table: this rank's table, padded for the groups (dense: world size, experts: edp size); its trainable
  // flags are read here, once. Every entry must be dense fp32 storage (MT_CHECK).
  // ops: an optimizer table (AdamW, Σg², scaling, bf16 rounding, accumulation) the state owns; null = the CPU
  // table. Memory: host (the CPU MemOps).
  ParamState(const ParamTable& table, int stage, Communicator& world, Communicator& edp, Communicator& ep,
             Precision precision = Precision::Fp32, std::unique_ptr<OptimOps> ops = nullptr);
  // On a backend's tables (not owned; they must outlive the state): buffers from `mem`, passes through `ops`.
  ParamState(const ParamTable& table, int stage, Communicator& world, Communicator& edp, Communicator& ep,
             Precision precision, OptimOps& ops, MemOps& mem);
  ~ParamState();

  // The bytes a ParamState of this table, stage, group sizes and precision holds on the rank at the given
  // group positions (rank 0 by default), without allocating: the allocator and the memory plan both use it.
  static StateBytes plan_bytes(const ParamTable& table, int stage, int world, int edp, Precision precision,
                               int world_rank = 0, int edp_rank = 0);

  // Sets every local parameter from a host buffer in table layout (each rank keeps its shard under stage 3):
  // set_unit_params for every unit, then finish_set_params.
  void set_params(const std::vector<float>& local_full);
  // Start-up staging one unit at a time: stores what this rank keeps of table unit `unit` (all of it under
  // stages 0–2, its shard under 3) from host values [units()[unit].size()] in table layout relative to the unit's
  // begin (padding included). After the last unit, finish_set_params() refreshes the bf16 copy and drops
  // stale gathers; the parameters are not to be read before.
  void set_unit_params(int unit, const float* values);
  void finish_set_params();
  // The local parameters in table layout, on the host (stage 3 gathers every unit). Collective under stage 3.
  std::vector<float> local_params();

  // What the model reads and writes through. access(): fp32 weights (under ZeRO-3 only with Precision::Fp32);
  // access_bf16(): the bf16 copy, params_acc the fp32 master (Precision::Bf16 only). Both hand out the same
  // fp32 gradients.
  // Pointers handed out are in the backend's memory space.
  ParamAccess<float>& access();
  ParamAccess<bf16>& access_bf16();
  // Stages 0–1 with every entry trainable: the full local gradient buffer (table layout, before reduction).
  bool has_flat_grads() const { return mode_ == GradMode::Flat; }
  // Host copies: gradients [begin, begin + n) of that buffer into dst[n], or all of it.
  void flat_grads_to_host(float* dst, i64 begin, i64 n) const;
  std::vector<float> flat_grads() const;
  // Host copy of the reduced gradient of one trainable entry of the table (stages 0–1, after reduce_grads):
  // dst[e.numel]. Works with frozen entries present (where flat_grads does not).
  void entry_grads_to_host(const ParamInfo& e, float* dst) const;
  // Host copy of the bf16 copy in table layout (stages 0–2; empty under 3, where units are rounded after their
  // gather); Precision::Bf16 only.
  std::vector<bf16> compute_copy() const;
  MemSpace space() const { return mem_->space(); }
  void zero_grads();
  // After all micro-batches: sums gradients over their groups (stages 0–1; 2–3 reduced during backward);
  // returns the global L2 norm over trainable entries (each shard once).
  double reduce_grads();
  void scale_grads(float coef);
  // One AdamW update (t 1-based) of this rank's trainable shard, then (stages 1–2) all-gathers the
  // parameters, then refreshes the bf16 copy.
  void adamw(const TrainConfig& t, double lr, long step);

  // Pieces of this rank's state for checkpoint I/O, as flat ranges of logical tensors, always in host memory.
  // Write: every element of every tensor belongs to exactly one rank. Read: what this rank must hold.
  // Moments only for trainable entries. Host space: the pieces point into the state itself (no copy). Other
  // spaces: they point into a host staging buffer sized to these pieces, filled from the state now (Write) or
  // uploaded into it by after_load() (Read); release_checkpoint_staging() frees it.
  enum class PieceUse { Write, Read };
  void checkpoint_pieces(PieceUse use, std::vector<TensorPiece>& model, std::vector<TensorPiece>& exp_avg,
                         std::vector<TensorPiece>& exp_avg_sq);
  // After a checkpoint read into the Read pieces: uploads staged pieces, refreshes derived copies (ZeRO-3 gather
  // cache, bf16 copy).
  void after_load();
  void release_checkpoint_staging();

  StateBytes bytes() const;
  int stage() const { return stage_; }
  Precision precision() const { return precision_; }

 private:
  // Flat: the model accumulates into the full local gradient buffer (stages 0–1, nothing frozen).
  // SlotSum: unit slots, trainable elements summed into a compact buffer, all-reduced at reduce_grads (0–1).
  // SlotReduceScatter: unit slots reduce-scattered into the trainable shard at grads_done (2–3).
  enum class GradMode { Flat, SlotSum, SlotReduceScatter };
  struct Run {
    i64 src, dst, n;  // src: from the segment's start in a unit slot; dst: in the target (see Segment::runs)
  };
  struct Segment {
    int unit = 0;
    bool expert = false;
    i64 begin = 0, end = 0;        // in table coordinates (padded)
    Communicator* group = nullptr; // world (dense) or edp (experts)
    int gsize = 1, grank = 0;      // the group as sharding sees it (1, 0 under stage 0)
    i64 chunk = 0;                 // elements per shard
    i64 mine = 0;                  // first element of this rank's chunk (table coordinates)
    i64 shard_off = 0;             // offset of this chunk in the parameter shard (stage 3)
    i64 live_mine = 0;             // elements of this rank's chunk outside frozen entries (padding counts)
    i64 mom_off = 0;               // offset of those in the moments (and, stages 2–3, the gradient shard)
    i64 gsum_off = 0, gsum_n = 0;  // SlotSum: the segment's non-frozen elements in the compact gradients
    bool has_frozen = false;
    i64 pack = 0;                  // SlotReduceScatter with frozen entries: elements per rank block
    i64 pack_off = 0;              // where the segment's packed blocks start in a slot's pack buffer
    std::vector<Run> runs;         // SlotSum: slot → compact gradients; SlotReduceScatter+frozen: slot packing
                                   // (src < 0: zero-fill n elements at dst)
    std::vector<std::pair<i64, i64>> frozen;  // frozen entries' [begin, end), ascending
    i64 live(i64 a, i64 b) const;  // elements of [a, b) outside frozen entries
  };
  struct Layout {
    GradMode mode = GradMode::Flat;
    std::vector<Segment> segs;
    std::vector<std::vector<int>> unit_segs;  // [unit] → indices into segs
    i64 full = 0, shard = 0, moments = 0, gsum = 0, max_unit = 0;
    // SlotReduceScatter with frozen entries: one slot's packed send buffer, every segment of a unit side by side
    // (they are in flight together): max over units of Σ gsize · pack. One per gradient slot.
    i64 pack_slot = 0;
    int grad_slots = 0;
  };
  static Layout make_layout(const ParamTable& table, int stage, int world, int world_rank, int edp, int edp_rank);
  static StateBytes bytes_of(const Layout& lay, int stage, Precision precision);

  template <typename T>
  class Gatherer;
  template <typename T>
  class Access;

  float* unit_grads(int unit);
  void unit_grads_done(int unit);
  struct GSlot;
  // SlotReduceScatter: starts the reduce-scatters of the slot's unit; completes the oldest slot in flight (false
  // when none is); completes every slot in flight, in start order.
  void start_reduce(GSlot& g);
  bool finish_oldest();
  void drain_reductions();
  void refresh_copy();
  void invalidate_gathers();
  void allocate();
  // v summed over c (a host scalar; staged through a backend buffer when c moves device memory).
  void reduce_scalar(Communicator& c, double& v);

  std::unique_ptr<OptimOps> own_ops_;  // the CPU defaults when no backend table is given
  std::unique_ptr<MemOps> own_mem_;
  OptimOps* ops_ = nullptr;  // every element-wise pass over the state goes through the backend
  MemOps* mem_ = nullptr;    // allocation, fills and copies of the state

  const ParamTable& table_;
  int stage_;
  Precision precision_;
  Communicator& world_;
  Communicator& edp_;
  Communicator& ep_;
  Layout lay_;
  GradMode mode_;
  Buffer<float> params_, grads_;       // full table layout (params_: stages 0–2; grads_: Flat)
  Buffer<float> pshard_;               // stage 3
  Buffer<float> gacc_;                 // SlotSum: compact non-frozen; SlotReduceScatter: trainable shard
  Buffer<float> exp_avg_, exp_avg_sq_; // this rank's non-frozen chunk elements (stage 0: whole segments)
  Buffer<bf16> copy_;                  // bf16 copy (Precision::Bf16): table layout (stages 0–2)
  Buffer<double> scalar_;              // one reduced scalar when a communicator moves device memory
  // A unit gradient slot: free (unit < 0), open (the model writes unit `unit`), or in flight (its reduce-scatters
  // started, `seq` their start order; buf and pack are the collectives' until finish).
  struct GSlot {
    int unit = -1;
    bool in_flight = false;
    long seq = 0;
    CommRequest reqs[2];            // one per segment of the unit (dense, expert)
    Communicator* req_comm[2] = {};
    Buffer<float> buf;
    Buffer<float> pack;             // packed reduce-scatter input (Layout::pack_slot)
  };
  long rs_clock_ = 0;
  std::vector<GSlot> gslots_;
  // Checkpoint staging (space other than Host): host copy of the pieces and where each lives in the state.
  struct Staged {
    float* state;
    i64 host_off, n;
  };
  std::vector<float> ckpt_host_;
  std::vector<Staged> ckpt_map_;
  std::vector<AdamWPiece> pieces_;          // AdamW ranges of trainable entries in this rank's chunks
  std::unique_ptr<Access<float>> acc32_;
  std::unique_ptr<Access<bf16>> acc16_;
};

}  // namespace moe
