// Owns the ZeRO sharding arithmetic: the state layout (shared with the memory plan), unit gradient slots and their
// reductions, shard-wise AdamW, the bf16 compute copy and the ZeRO-3 unit gatherer.
#include "parallel/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <type_traits>

#include "core/error.h"

namespace moe {

// ---- ZeRO-3 gatherer: unit gathers of a T shard into three T slots (with prefetch). ----
template <typename T>
class ParamState::Gatherer {
 public:
  Gatherer(ParamState& s, const T* shard, CommDtype dtype) : s_(s), shard_(shard), dtype_(dtype) {
    for (auto& sl : slots_) sl.buf = Buffer<T>(*s.mem_, s.lay_.max_unit, "ZeRO-3 parameter gather slot");
  }

  const T* params(int u, typename ParamAccess<T>::Direction dir) {
    Slot* sl = find(u);
    if (!sl) sl = start_gather(u);
    if (sl->pending) wait_all(*sl);
    sl->refs++;
    const int next = dir == ParamAccess<T>::Direction::Forward ? u + 1 : u - 1;
    if (next >= 1 && next < int(s_.table_.units().size()) && !find(next)) start_gather(next, /*optional=*/true);
    return sl->buf.data();
  }
  void release(int u) {
    Slot* sl = find(u);
    MT_CHECK(sl && sl->refs > 0, "release of unit ", u, " that is not held");
    sl->refs--;
  }
  // Drops every cached gather (parameters changed after an update).
  void invalidate() {
    for (auto& sl : slots_) {
      MT_CHECK(sl.refs == 0 && !sl.pending, "parameters updated while a unit is held");
      sl.unit = -1;
    }
  }

 private:
  struct Slot {
    int unit = -1;
    int refs = 0;
    bool pending = false;
    CommRequest reqs[2];          // one per segment of the unit (dense, expert)
    Communicator* req_comm[2] = {};
    Buffer<T> buf;
    long last_use = 0;
  };
  Slot* find(int u) {
    for (auto& sl : slots_)
      if (sl.unit == u) return &sl;
    return nullptr;
  }
  // Every rank makes the same sequence of calls, so collectives match across ranks.
  Slot* start_gather(int u, bool optional = false) {
    Slot* victim = nullptr;
    for (auto& sl : slots_)
      if (sl.refs == 0 && !sl.pending && (!victim || sl.last_use < victim->last_use)) victim = &sl;
    if (!victim && !optional) {
      // A needed unit may take the slot of an unused prefetch: finish that gather, then reuse the slot.
      for (auto& sl : slots_)
        if (sl.refs == 0 && (!victim || sl.last_use < victim->last_use)) victim = &sl;
      MT_CHECK(victim, "no free parameter slot for unit ", u);
      wait_all(*victim);
    }
    if (!victim) return nullptr;
    victim->unit = u;
    victim->last_use = ++clock_;
    victim->pending = true;
    victim->req_comm[0] = victim->req_comm[1] = nullptr;
    const i64 base = s_.table_.units()[u].begin;
    int k = 0;
    for (int si : s_.lay_.unit_segs[u]) {
      const Segment& seg = s_.lay_.segs[si];
      MT_CHECK(k < 2, "a unit has at most two segments");
      victim->req_comm[k] = seg.group;
      seg.group->iall_gather(victim->buf.data() + (seg.begin - base), shard_ + seg.shard_off, seg.chunk, dtype_,
                             victim->reqs[k]);
      ++k;
    }
    return victim;
  }
  static void wait_all(Slot& sl) {
    for (int k = 0; k < 2; ++k)
      if (sl.req_comm[k]) sl.req_comm[k]->wait(sl.reqs[k]);
    sl.pending = false;
  }

  ParamState& s_;
  const T* shard_;
  CommDtype dtype_;
  Slot slots_[3];
  long clock_ = 0;
};

// ---- What the model sees: weights from a flat copy or the gatherer; fp32 gradients from the state. ----
// Stages 0–2: T weights from a flat buffer (the master, or the bf16 copy), acc_t<T> values from the fp32 master.
// Stage 3: every unit is gathered as fp32 master shards (Gatherer<float>); T = bf16 then rounds the gathered unit
// into one of three bf16 slots (cached until the next update). The bf16 copy could instead be sharded and
// gathered as bf16 (half the traffic): an optimisation left for later, this keeps one gather path.
template <typename T>
class ParamState::Access final : public ParamAccess<T> {
 public:
  using Dir = typename ParamAccess<T>::Direction;
  Access(ParamState& s, const T* flat, const float* master) : s_(s), flat_(flat), master_(master) {}
  Access(ParamState& s, std::unique_ptr<Gatherer<float>> g) : s_(s), gather_(std::move(g)) {
    if constexpr (!std::is_same<T, float>::value)
      for (Held& h : held_) h.copy = Buffer<T>(*s.mem_, s.lay_.max_unit, "ZeRO-3 bf16 unit slot");
  }
  const T* params(int u, Dir dir) override {
    if (!gather_) return flat_ + s_.table_.units()[u].begin;
    const float* f = gather_->params(u, static_cast<typename ParamAccess<float>::Direction>(int(dir)));
    Held& h = hold(u);
    h.f32 = f;
    h.refs++;
    if constexpr (std::is_same<T, float>::value) {
      return f;
    } else {
      if (!h.rounded) {
        // contract: DESIGN §8 (compute copy = round_bf16(master))
        const i64 n = s_.table_.units()[u].size();
        T* dst = h.copy.data();
        s_.ops_->round_to_bf16(dst, f, n);
        h.rounded = true;
      }
      return h.copy.data();
    }
  }
  const acc_t<T>* params_acc(int u) override {
    if (!gather_) return master_ + s_.table_.units()[u].begin;
    for (Held& h : held_)
      if (h.unit == u && h.refs > 0) return h.f32;
    MT_CHECK(false, "params_acc of unit ", u, " that is not held");
    return nullptr;
  }
  void release(int u) override {
    if (!gather_) return;
    gather_->release(u);
    for (Held& h : held_)
      if (h.unit == u && h.refs > 0) {
        h.refs--;
        return;
      }
  }
  acc_t<T>* grads(int u) override { return s_.unit_grads(u); }
  void grads_done(int u) override { s_.unit_grads_done(u); }
  void invalidate() {
    if (!gather_) return;
    gather_->invalidate();
    for (Held& h : held_) h.unit = -1, h.rounded = false;
  }

 private:
  // A held (or recently held) unit under stage 3: its gathered fp32 values and (bf16) the rounded copy.
  struct Held {
    int unit = -1;
    int refs = 0;
    const float* f32 = nullptr;
    bool rounded = false;
    Buffer<T> copy;       // bf16 only: [max unit]
    long last_use = 0;
  };
  Held& hold(int u) {
    Held* victim = nullptr;
    for (Held& h : held_)
      if (h.unit == u) {
        h.last_use = ++clock_;
        return h;
      }
    for (Held& h : held_)
      if (h.refs == 0 && (!victim || h.last_use < victim->last_use)) victim = &h;
    MT_CHECK(victim, "no free compute-copy slot for unit ", u);
    victim->unit = u;
    victim->rounded = false;
    victim->last_use = ++clock_;
    return *victim;
  }

  ParamState& s_;
  const T* flat_ = nullptr;
  const float* master_ = nullptr;
  std::unique_ptr<Gatherer<float>> gather_;
  Held held_[3];
  long clock_ = 0;
};

// ---- Layout: the one sizing function of the allocator and the memory plan. ----

i64 ParamState::Segment::live(i64 a, i64 b) const {
  i64 n = std::max<i64>(0, b - a);
  for (const auto& f : frozen) n -= std::max<i64>(0, std::min(b, f.second) - std::max(a, f.first));
  return n;
}

// Calls f(x, y) for each maximal subrange [x, y) of [a, b) outside the (ascending) frozen ranges.
template <typename F>
static void live_runs(const std::vector<std::pair<i64, i64>>& frozen, i64 a, i64 b, F&& f) {
  i64 x = a;
  for (const auto& fr : frozen) {
    if (fr.second <= x) continue;
    if (fr.first >= b) break;
    if (fr.first > x) f(x, fr.first);
    x = std::max(x, fr.second);
  }
  if (x < b) f(x, b);
}

ParamState::Layout ParamState::make_layout(const ParamTable& table, int stage, int world, int world_rank, int edp,
                                           int edp_rank) {
  MT_CHECK(stage >= 0 && stage <= 3, "ZeRO stage ", stage, " is not 0..3");
  Layout L;
  bool any_frozen = false;
  for (const ParamInfo& e : table.entries()) {
    MT_CHECK(e.kind == StorageKind::Dense, "parameter ", e.name,
             ": NF4-block storage is reserved for QLoRA bases and not supported yet");
    MT_CHECK(e.dtype == DType::F32, "parameter ", e.name, ": master weights are fp32, not ", dtype_name(e.dtype));
    any_frozen |= !e.trainable;
  }
  L.mode = stage >= 2 ? GradMode::SlotReduceScatter : any_frozen ? GradMode::SlotSum : GradMode::Flat;
  L.full = table.total_numel();
  L.unit_segs.resize(table.units().size());
  for (const ParamUnit& u : table.units()) {
    L.max_unit = std::max(L.max_unit, u.size());
    const int unit = int(&u - table.units().data());
    for (int part = 0; part < 2; ++part) {
      Segment s;
      s.unit = unit;
      s.expert = part == 1;
      s.begin = s.expert ? u.expert_begin : u.begin;
      s.end = s.expert ? u.end : u.expert_begin;
      if (s.end == s.begin) continue;
      s.gsize = stage == 0 ? 1 : (s.expert ? edp : world);
      s.grank = stage == 0 ? 0 : (s.expert ? edp_rank : world_rank);
      MT_CHECK((s.end - s.begin) % s.gsize == 0, "segment of unit ", unit, " not padded to the group size ", s.gsize);
      s.chunk = (s.end - s.begin) / s.gsize;
      s.mine = s.begin + s.grank * s.chunk;
      s.shard_off = L.shard;
      L.shard += s.chunk;
      for (const ParamInfo& e : table.entries())
        if (e.unit == unit && e.expert == s.expert && !e.trainable) s.frozen.push_back({e.offset, e.offset + e.numel});
      std::sort(s.frozen.begin(), s.frozen.end());
      s.has_frozen = !s.frozen.empty();
      s.live_mine = s.live(s.mine, s.mine + s.chunk);
      s.mom_off = L.moments;
      L.moments += s.live_mine;
      if (L.mode == GradMode::SlotSum) {
        s.gsum_off = L.gsum;
        s.gsum_n = s.live(s.begin, s.end);
        L.gsum += s.gsum_n;
        i64 k = 0;
        live_runs(s.frozen, s.begin, s.end, [&](i64 x, i64 y) {
          s.runs.push_back({x - s.begin, k, y - x});
          k += y - x;
        });
      } else if (L.mode == GradMode::SlotReduceScatter && s.has_frozen) {
        // Rank r's non-frozen elements packed into block r of `pack` elements (zero-padded): the reduce-scatter
        // then moves and sums trainable gradients only.
        for (int r = 0; r < s.gsize; ++r)
          s.pack = std::max(s.pack, s.live(s.begin + r * s.chunk, s.begin + (r + 1) * s.chunk));
        for (int r = 0; r < s.gsize; ++r) {
          i64 k = 0;
          live_runs(s.frozen, s.begin + r * s.chunk, s.begin + (r + 1) * s.chunk, [&](i64 x, i64 y) {
            s.runs.push_back({x - s.begin, r * s.pack + k, y - x});
            k += y - x;
          });
          if (k < s.pack) s.runs.push_back({-1, r * s.pack + k, s.pack - k});
        }
      }
      L.unit_segs[unit].push_back(int(L.segs.size()));
      L.segs.push_back(std::move(s));
    }
    // A unit's segments are in flight together: each packs into its own part of the slot's pack buffer.
    i64 unit_pack = 0;
    for (int si : L.unit_segs[unit]) {
      L.segs[si].pack_off = unit_pack;
      unit_pack += L.segs[si].gsize * L.segs[si].pack;
    }
    L.pack_slot = std::max(L.pack_slot, unit_pack);
  }
  if (L.mode != GradMode::Flat) {
    // One open slot, two when the embedding's gradients stay open across the final unit (tied lm_head); under
    // stages 2–3 one more, so the next unit's backward writes into a free slot while the previous unit's
    // reduce-scatter is in flight.
    const bool tied = table.find("lm_head.weight") == nullptr && table.find("model.embed_tokens.weight") != nullptr;
    L.grad_slots = (tied ? 2 : 1) + (L.mode == GradMode::SlotReduceScatter ? 1 : 0);
  }
  return L;
}

StateBytes ParamState::bytes_of(const Layout& L, int stage, Precision precision) {
  StateBytes b;
  const i64 held = stage == 3 ? L.shard : L.full;  // weights this rank keeps
  b.params = 4 * held;
  b.grads = 4 * (L.mode == GradMode::Flat ? L.full : L.mode == GradMode::SlotSum ? L.gsum : L.moments);
  b.optimizer = 8 * L.moments;
  const bool bf = precision == Precision::Bf16;
  b.compute_copy = bf && stage <= 2 ? 2 * held : 0;  // stage 3: the bf16 slots below instead
  b.grad_slots = 4 * i64(L.grad_slots) * L.max_unit;
  // Stage 3: three fp32 gather slots, and with bf16 three bf16 slots the gathered units are rounded into.
  const i64 param_slots = stage == 3 ? 3 * L.max_unit * (bf ? 4 + 2 : 4) : 0;
  // Frozen entries under stages 2–3: the trainable gradients packed per rank block (a copy between buffers:
  // device copies may not overlap), small when little is trainable; one pack buffer per gradient slot (each slot
  // may be in flight).
  b.working = param_slots + b.grad_slots + 4 * i64(L.grad_slots) * L.pack_slot;
  return b;
}

StateBytes ParamState::plan_bytes(const ParamTable& table, int stage, int world, int edp, Precision precision,
                                  int world_rank, int edp_rank) {
  return bytes_of(make_layout(table, stage, world, world_rank, edp, edp_rank), stage, precision);
}

// ---- ParamState ----

ParamState::ParamState(const ParamTable& table, int stage, Communicator& world, Communicator& edp, Communicator& ep,
                       Precision precision, std::unique_ptr<OptimOps> ops)
    : table_(table), stage_(stage), precision_(precision), world_(world), edp_(edp), ep_(ep),
      lay_(make_layout(table, stage, world.size(), world.rank(), edp.size(), edp.rank())), mode_(lay_.mode) {
  own_ops_ = ops ? std::move(ops) : make_cpu_optim_ops();
  own_mem_ = make_cpu_mem_ops();
  ops_ = own_ops_.get();
  mem_ = own_mem_.get();
  allocate();
}

ParamState::ParamState(const ParamTable& table, int stage, Communicator& world, Communicator& edp, Communicator& ep,
                       Precision precision, OptimOps& ops, MemOps& mem)
    : table_(table), stage_(stage), precision_(precision), world_(world), edp_(edp), ep_(ep),
      lay_(make_layout(table, stage, world.size(), world.rank(), edp.size(), edp.rank())), mode_(lay_.mode) {
  ops_ = &ops;
  mem_ = &mem;
  allocate();
}

// Every state buffer, once (zero-filled by MemOps::alloc); then the AdamW pieces and the model's access.
void ParamState::allocate() {
  for (Communicator* c : {&world_, &edp_, &ep_})
    MT_CHECK(c->buffer_space() == mem_->space(), "ParamState: a communicator moves memory of another space than "
             "the backend's (device state needs the device communicators)");
  for (Segment& s : lay_.segs) s.group = s.expert ? &edp_ : &world_;
  MemOps& m = *mem_;
  if (stage_ <= 2)
    params_ = Buffer<float>(m, lay_.full, "fp32 master weights");
  else
    pshard_ = Buffer<float>(m, lay_.shard, "fp32 master weight shard");
  if (mode_ == GradMode::Flat)
    grads_ = Buffer<float>(m, lay_.full, "fp32 gradients");
  else
    gacc_ = Buffer<float>(m, mode_ == GradMode::SlotSum ? lay_.gsum : lay_.moments, "fp32 gradient shard");
  exp_avg_ = Buffer<float>(m, lay_.moments, "AdamW exp_avg");
  exp_avg_sq_ = Buffer<float>(m, lay_.moments, "AdamW exp_avg_sq");
  gslots_.resize(size_t(lay_.grad_slots));
  for (GSlot& g : gslots_) {
    g.buf = Buffer<float>(m, lay_.max_unit, "unit gradient slot");
    if (lay_.pack_slot > 0) g.pack = Buffer<float>(m, lay_.pack_slot, "packed gradient reduce-scatter buffer");
  }
  if (mem_->space() != MemSpace::Host) scalar_ = Buffer<double>(m, 1, "reduced scalar");
  const bool bf = precision_ == Precision::Bf16;
  if (bf && stage_ <= 2) copy_ = Buffer<bf16>(m, lay_.full, "bf16 weight copy");  // stage 3: rounded per gathered unit
  // AdamW ranges: every trainable tensor's part of this rank's chunks (padding has no tensor, stays zero).
  for (const Segment& s : lay_.segs) {
    const i64 c0 = s.mine, c1 = s.mine + s.chunk;
    for (const ParamInfo& e : table_.entries()) {
      if (e.unit != s.unit || e.expert != s.expert || !e.trainable) continue;
      const i64 a = std::max(c0, e.offset), b = std::min(c1, e.offset + e.numel);
      if (a >= b) continue;
      float* p = stage_ == 3 ? pshard_.data() + s.shard_off + (a - c0) : params_.data() + a;
      const i64 mi = s.mom_off + s.live(c0, a);
      const float* g = mode_ == GradMode::Flat      ? grads_.data() + a
                       : mode_ == GradMode::SlotSum ? gacc_.data() + s.gsum_off + s.live(s.begin, a)
                                                    : gacc_.data() + mi;
      pieces_.push_back({p, g, exp_avg_.data() + mi, exp_avg_sq_.data() + mi, b - a, e.decay});
    }
  }
  // The optimizer table's scratch, planned now: this piece list every step, Σg² over ranges of the gradient buffer.
  ops_->reserve(pieces_, mode_ == GradMode::Flat ? grads_.size() : gacc_.size());
  if (stage_ <= 2) {
    acc32_ = std::make_unique<Access<float>>(*this, params_.data(), params_.data());
    if (bf) acc16_ = std::make_unique<Access<bf16>>(*this, copy_.data(), params_.data());
  } else if (bf) {
    acc16_ = std::make_unique<Access<bf16>>(*this, std::make_unique<Gatherer<float>>(*this, pshard_.data(), CommDtype::F32));
  } else {
    acc32_ = std::make_unique<Access<float>>(*this, std::make_unique<Gatherer<float>>(*this, pshard_.data(), CommDtype::F32));
  }
}

// Reduce-scatters still in flight are completed (their buffers are about to be freed) unless an exception is
// unwinding: then the job is ending, and a wait on peers that took another path could hang it.
ParamState::~ParamState() {
  if (std::uncaught_exceptions() > 0) return;
  try {
    for (GSlot& g : gslots_)
      for (int k = 0; k < 2; ++k)
        if (g.in_flight && g.req_comm[k]) g.req_comm[k]->wait(g.reqs[k]);
  } catch (...) {
  }
}

ParamAccess<float>& ParamState::access() {
  MT_CHECK(acc32_, "fp32 weight access under ZeRO-3 exists only with Precision::Fp32 (use access_bf16)");
  return *acc32_;
}

ParamAccess<bf16>& ParamState::access_bf16() {
  MT_CHECK(acc16_, "the bf16 weight copy exists only with Precision::Bf16");
  return *acc16_;
}

void ParamState::flat_grads_to_host(float* dst, i64 begin, i64 n) const {
  MT_CHECK(mode_ == GradMode::Flat, "flat gradients exist only under ZeRO stages 0-1 with every entry trainable");
  MT_CHECK(begin >= 0 && n >= 0 && begin + n <= grads_.size(), "flat_grads_to_host: range out of the table");
  mem_->to_host(dst, grads_.data() + begin, n * i64(sizeof(float)));
}

void ParamState::entry_grads_to_host(const ParamInfo& e, float* dst) const {
  MT_CHECK(mode_ != GradMode::SlotReduceScatter, "entry_grads_to_host: ZeRO stages 2-3 hold gradient shards only");
  MT_CHECK(e.trainable, "entry_grads_to_host: ", e.name, " is frozen (no gradient)");
  const i64 bytes = e.numel * i64(sizeof(float));
  if (mode_ == GradMode::Flat) return mem_->to_host(dst, grads_.data() + e.offset, bytes);
  for (const Segment& s : lay_.segs) {
    if (s.unit != e.unit || s.expert != e.expert) continue;
    return mem_->to_host(dst, gacc_.data() + s.gsum_off + s.live(s.begin, e.offset), bytes);
  }
  MT_CHECK(false, "entry_grads_to_host: no segment holds ", e.name);
}

std::vector<float> ParamState::flat_grads() const {
  std::vector<float> out(size_t(lay_.full));
  flat_grads_to_host(out.data(), 0, lay_.full);
  return out;
}

std::vector<bf16> ParamState::compute_copy() const {
  MT_CHECK(precision_ == Precision::Bf16, "the bf16 weight copy exists only with Precision::Bf16");
  std::vector<bf16> out(size_t(copy_.size()));
  mem_->to_host(out.data(), copy_.data(), copy_.size() * i64(sizeof(bf16)));
  return out;
}

void ParamState::reduce_scalar(Communicator& c, double& v) {
  if (c.buffer_space() == MemSpace::Host) {
    c.all_reduce_sum(&v, 1);
    return;
  }
  mem_->to_backend(scalar_.data(), &v, sizeof v);
  c.all_reduce_sum(scalar_.data(), 1);
  mem_->to_host(&v, scalar_.data(), sizeof v);
}

// contract: B1 (the bf16 copy is round_bf16 of the fp32 master, every parameter)
void ParamState::refresh_copy() {
  if (precision_ != Precision::Bf16 || stage_ == 3) return;  // stage 3: rounded per unit after the gather
  ops_->round_to_bf16(copy_.data(), params_.data(), copy_.size());
}

void ParamState::invalidate_gathers() {
  if (acc32_) acc32_->invalidate();
  if (acc16_) acc16_->invalidate();
}

void ParamState::set_params(const std::vector<float>& local_full) {
  MT_CHECK(i64(local_full.size()) == table_.total_numel(), "set_params size mismatch");
  const std::vector<ParamUnit>& units = table_.units();
  for (size_t u = 0; u < units.size(); ++u) set_unit_params(int(u), local_full.data() + units[u].begin);
  finish_set_params();
}

void ParamState::set_unit_params(int unit, const float* values) {
  const std::vector<ParamUnit>& units = table_.units();
  MT_CHECK(unit >= 0 && size_t(unit) < units.size(), "set_unit_params: unit ", unit, " out of range");
  const ParamUnit& pu = units[size_t(unit)];
  if (stage_ <= 2) {
    mem_->to_backend(params_.data() + pu.begin, values, pu.size() * i64(sizeof(float)));
    return;
  }
  for (int k : lay_.unit_segs[size_t(unit)]) {
    const Segment& s = lay_.segs[size_t(k)];
    mem_->to_backend(pshard_.data() + s.shard_off, values + (s.mine - pu.begin), s.chunk * i64(sizeof(float)));
  }
}

void ParamState::finish_set_params() {
  refresh_copy();
  invalidate_gathers();
}

std::vector<float> ParamState::local_params() {
  std::vector<float> out(size_t(table_.total_numel()), 0.f);
  if (stage_ <= 2) {
    mem_->to_host(out.data(), params_.data(), lay_.full * i64(sizeof(float)));
    return out;
  }
  if (mem_->space() == MemSpace::Host) {
    for (const Segment& s : lay_.segs)
      s.group->all_gather(out.data() + s.begin, pshard_.data() + s.shard_off, s.chunk, CommDtype::F32);
    return out;
  }
  // Device memory: each segment gathered into a backend buffer (outside the step loop), then copied out.
  i64 longest = 0;
  for (const Segment& s : lay_.segs) longest = std::max(longest, s.end - s.begin);
  Buffer<float> seg_buf(*mem_, longest, "local_params gather");
  for (const Segment& s : lay_.segs) {
    s.group->all_gather(seg_buf.data(), pshard_.data() + s.shard_off, s.chunk, CommDtype::F32);
    mem_->to_host(out.data() + s.begin, seg_buf.data(), (s.end - s.begin) * i64(sizeof(float)));
  }
  return out;
}

void ParamState::zero_grads() {
  drain_reductions();
  mem_->zero(grads_.data(), grads_.size() * i64(sizeof(float)));
  mem_->zero(gacc_.data(), gacc_.size() * i64(sizeof(float)));
  for (GSlot& g : gslots_) g.unit = -1;
}

// An open slot of unit u, else a free one (zeroed); when every slot is open or in flight, the oldest reduce-scatter
// is completed to free its slot.
float* ParamState::unit_grads(int u) {
  if (mode_ == GradMode::Flat) return grads_.data() + table_.units()[u].begin;
  for (GSlot& g : gslots_)
    if (g.unit == u && !g.in_flight) return g.buf.data();
  for (;;) {
    for (GSlot& g : gslots_)
      if (g.unit < 0) {
        g.unit = u;
        mem_->zero(g.buf.data(), table_.units()[u].size() * i64(sizeof(float)));
        return g.buf.data();
      }
    MT_CHECK(finish_oldest(), "no free gradient slot for unit ", u, " (", gslots_.size(), " slots)");
  }
}

// SlotSum: the unit's trainable gradients are added into the compact buffer (reduced in reduce_grads).
// SlotReduceScatter: the unit's reduce-scatters are started (start_reduce); the slot is in flight until finished.
void ParamState::unit_grads_done(int u) {
  if (mode_ == GradMode::Flat) return;
  GSlot* slot = nullptr;
  for (GSlot& g : gslots_)
    if (g.unit == u && !g.in_flight) slot = &g;
  MT_CHECK(slot, "grads_done for unit ", u, " without grads");
  if (mode_ == GradMode::SlotReduceScatter) {
    start_reduce(*slot);
    return;
  }
  const i64 base = table_.units()[u].begin;
  for (int si : lay_.unit_segs[u]) {
    const Segment& seg = lay_.segs[si];
    const float* src = slot->buf.data() + (seg.begin - base);
    for (const Run& r : seg.runs) ops_->accumulate(gacc_.data() + seg.gsum_off + r.dst, src + r.src, r.n);
  }
  slot->unit = -1;
}

// Each segment is reduce-scattered in place (trainable elements only, packed per rank into the slot's pack buffer
// when the segment has frozen entries), non-blocking: the requests are completed by finish_oldest().
void ParamState::start_reduce(GSlot& g) {
  const int u = g.unit;
  const i64 base = table_.units()[u].begin;
  int k = 0;
  for (int si : lay_.unit_segs[u]) {
    const Segment& seg = lay_.segs[si];
    MT_CHECK(k < 2, "a unit has at most two segments");
    float* src = g.buf.data() + (seg.begin - base);
    i64 n = seg.chunk;
    if (seg.has_frozen) {
      // Rank blocks of trainable elements packed into their own buffer (copies between buffers never overlap).
      constexpr i64 F = sizeof(float);
      float* pack = g.pack.data() + seg.pack_off;
      for (const Run& r : seg.runs) {
        if (r.src < 0)
          mem_->zero(pack + r.dst, r.n * F);
        else
          mem_->copy(pack + r.dst, src + r.src, r.n * F);
      }
      src = pack;
      n = seg.pack;
    }
    g.req_comm[k] = seg.group;
    seg.group->ireduce_scatter_sum(src + i64(seg.grank) * n, src, n, CommDtype::F32, g.reqs[k]);
    ++k;
  }
  for (; k < 2; ++k) g.req_comm[k] = nullptr;
  g.in_flight = true;
  g.seq = ++rs_clock_;
}

// Completes the slot in flight that started first: waits its requests, adds this rank's chunk of each segment
// into the gradient shard, frees the slot. Start order keeps the additions into each shard element in the order of
// the blocking reduction.
bool ParamState::finish_oldest() {
  GSlot* g = nullptr;
  for (GSlot& s : gslots_)
    if (s.in_flight && (!g || s.seq < g->seq)) g = &s;
  if (!g) return false;
  for (int k = 0; k < 2; ++k)
    if (g->req_comm[k]) g->req_comm[k]->wait(g->reqs[k]);
  const i64 base = table_.units()[g->unit].begin;
  for (int si : lay_.unit_segs[g->unit]) {
    const Segment& seg = lay_.segs[si];
    const float* src = seg.has_frozen ? g->pack.data() + seg.pack_off : g->buf.data() + (seg.begin - base);
    const i64 n = seg.has_frozen ? seg.pack : seg.chunk;
    ops_->accumulate(gacc_.data() + seg.mom_off, src + i64(seg.grank) * n, seg.live_mine);
  }
  g->in_flight = false;
  g->req_comm[0] = g->req_comm[1] = nullptr;
  g->unit = -1;
  return true;
}

void ParamState::drain_reductions() {
  while (finish_oldest()) {
  }
}

// contract: C5.clip
double ParamState::reduce_grads() {
  if (mode_ == GradMode::Flat) {
    for (const Segment& s : lay_.segs) s.group->all_reduce_sum(grads_.data() + s.begin, s.end - s.begin);
    double dense = 0, expert = 0;
    for (const Segment& s : lay_.segs)
      (s.expert ? expert : dense) += ops_->grad_sq_sum(grads_.data() + s.begin, s.end - s.begin);
    reduce_scalar(ep_, expert);  // each expert lives on one rank of the EP group
    return std::sqrt(dense + expert);
  }
  if (mode_ == GradMode::SlotSum) {
    for (const Segment& s : lay_.segs) s.group->all_reduce_sum(gacc_.data() + s.gsum_off, s.gsum_n);
    double dense = 0, expert = 0;
    for (const Segment& s : lay_.segs) (s.expert ? expert : dense) += ops_->grad_sq_sum(gacc_.data() + s.gsum_off, s.gsum_n);
    reduce_scalar(ep_, expert);
    return std::sqrt(dense + expert);
  }
  // Reduced during backward (the last reduce-scatters completed now); shards partition every trainable dense and
  // expert element exactly once.
  drain_reductions();
  double sq = ops_->grad_sq_sum(gacc_.data(), gacc_.size());
  reduce_scalar(world_, sq);
  return std::sqrt(sq);
}

void ParamState::scale_grads(float coef) {
  drain_reductions();
  Buffer<float>& g = mode_ == GradMode::Flat ? grads_ : gacc_;
  ops_->scale(g.data(), g.size(), coef);
}

// contract: C5.adamw
void ParamState::adamw(const TrainConfig& t, double lr, long step) {
  drain_reductions();
  ops_->adamw(pieces_, AdamWHyper{lr, t.beta1, t.beta2, t.eps, t.weight_decay}, step, 1.f);
  if (stage_ == 1 || stage_ == 2) {
    for (const Segment& s : lay_.segs)
      s.group->all_gather(params_.data() + s.begin, params_.data() + s.mine, s.chunk, CommDtype::F32);
  }
  refresh_copy();
  invalidate_gathers();
}

void ParamState::checkpoint_pieces(PieceUse use, std::vector<TensorPiece>& model, std::vector<TensorPiece>& exp_avg,
                                   std::vector<TensorPiece>& exp_avg_sq) {
  model.clear();
  exp_avg.clear();
  exp_avg_sq.clear();
  for (const Segment& s : lay_.segs) {
    // Elements this rank owns for writing: its shard, or (stage 0) an even split over the segment's group.
    i64 own0 = s.mine, own1 = s.mine + s.chunk;
    if (stage_ == 0) {
      const i64 g = s.group->size(), idx = s.group->rank(), c = (s.end - s.begin + g - 1) / g;
      own0 = std::min(s.end, s.begin + idx * c);
      own1 = std::min(s.end, own0 + c);
    }
    // Parameters held: all local ones (stages 0-2) or the shard (stage 3); moments: the shard (whole under stage 0).
    const bool write = use == PieceUse::Write;
    const i64 p0 = write ? own0 : (stage_ == 3 ? s.mine : s.begin), p1 = write ? own1 : (stage_ == 3 ? s.mine + s.chunk : s.end);
    const i64 m0 = write ? own0 : s.mine, m1 = write ? own1 : s.mine + s.chunk;
    auto param_at = [&](i64 x) { return stage_ == 3 ? pshard_.data() + s.shard_off + (x - s.mine) : params_.data() + x; };
    for (const ParamInfo& e : table_.entries()) {
      if (e.unit != s.unit || e.expert != s.expert) continue;
      const i64 a = std::max(p0, e.offset), b = std::min(p1, e.offset + e.numel);
      if (a < b) model.push_back({e.name, a - e.offset, b - e.offset, param_at(a)});
      if (!e.trainable) continue;  // frozen: no moments
      const i64 c = std::max(m0, e.offset), d = std::min(m1, e.offset + e.numel);
      if (c < d) {
        const i64 mi = s.mom_off + s.live(s.mine, c);
        exp_avg.push_back({e.name, c - e.offset, d - e.offset, exp_avg_.data() + mi});
        exp_avg_sq.push_back({e.name, c - e.offset, d - e.offset, exp_avg_sq_.data() + mi});
      }
    }
  }
  release_checkpoint_staging();
  if (mem_->space() == MemSpace::Host) return;  // the pieces are the state itself
  // Other spaces: host staging sized to these pieces; each piece's pointer moves there.
  i64 total = 0;
  for (auto* v : {&model, &exp_avg, &exp_avg_sq})
    for (const TensorPiece& p : *v) total += p.end - p.begin;
  ckpt_host_.assign(size_t(total), 0.f);
  i64 off = 0;
  for (auto* v : {&model, &exp_avg, &exp_avg_sq})
    for (TensorPiece& p : *v) {
      const i64 n = p.end - p.begin;
      ckpt_map_.push_back({p.data, off, n});
      p.data = ckpt_host_.data() + off;
      if (use == PieceUse::Write) mem_->to_host(p.data, ckpt_map_.back().state, n * i64(sizeof(float)));
      off += n;
    }
}

void ParamState::release_checkpoint_staging() {
  std::vector<float>().swap(ckpt_host_);
  ckpt_map_.clear();
}

void ParamState::after_load() {
  for (const Staged& st : ckpt_map_)
    mem_->to_backend(st.state, ckpt_host_.data() + st.host_off, st.n * i64(sizeof(float)));
  release_checkpoint_staging();
  refresh_copy();
  invalidate_gathers();
}

StateBytes ParamState::bytes() const { return bytes_of(lay_, stage_, precision_); }

}  // namespace moe
