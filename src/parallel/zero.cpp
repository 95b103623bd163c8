// Owns the ZeRO sharding arithmetic: segment chunks, group reductions, shard-wise AdamW and the ZeRO-3 unit gatherer.
#include "parallel/zero.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "optim/adamw.h"

namespace moe {

// ---- ZeRO-3 access: unit gathers into slots (with prefetch), per-unit gradient reduce-scatter. ----
class ParamState::Zero3Access final : public ParamAccess<float> {
 public:
  explicit Zero3Access(ParamState& s) : s_(s) {
    i64 max_unit = 0, max_chunk = 0;
    for (const ParamUnit& u : s.table_.units()) max_unit = std::max(max_unit, u.size());
    for (const Segment& g : s.segs_) max_chunk = std::max(max_chunk, g.chunk);
    for (auto& sl : pslots_) sl.buf.assign(size_t(max_unit), 0.f);
    for (auto& sl : gslots_) sl.buf.assign(size_t(max_unit), 0.f);
    rs_tmp_.assign(size_t(max_chunk), 0.f);
    unit_segs_.resize(s.table_.units().size());
    for (size_t i = 0; i < s.segs_.size(); ++i) unit_segs_[s.segs_[i].unit].push_back(int(i));
  }
  i64 working_bytes() const { return i64(4 * (3 * pslots_[0].buf.size() + 2 * gslots_[0].buf.size() + rs_tmp_.size())); }

  const float* params(int u, Direction dir) override {
    PSlot* sl = find(u);
    if (!sl) sl = start_gather(u);
    if (sl->pending) {
      for (auto& r : sl->reqs) r->wait();
      sl->reqs.clear();
      sl->pending = false;
    }
    sl->refs++;
    const int next = dir == Direction::Forward ? u + 1 : u - 1;
    if (next >= 1 && next < int(s_.table_.units().size()) && !find(next)) start_gather(next, /*optional=*/true);
    return sl->buf.data();
  }
  void release(int u) override {
    PSlot* sl = find(u);
    MT_CHECK(sl && sl->refs > 0, "release of unit ", u, " that is not held");
    sl->refs--;
  }
  float* grads(int u) override {
    for (auto& g : gslots_)
      if (g.unit == u) return g.buf.data();
    for (auto& g : gslots_)
      if (g.unit < 0) {
        g.unit = u;
        std::fill(g.buf.begin(), g.buf.begin() + s_.table_.units()[u].size(), 0.f);
        return g.buf.data();
      }
    MT_CHECK(false, "no free gradient slot for unit ", u);
    return nullptr;
  }
  void grads_done(int u) override {
    for (auto& g : gslots_) {
      if (g.unit != u) continue;
      const i64 base = s_.table_.units()[u].begin;
      for (int si : unit_segs_[u]) {
        const Segment& seg = s_.segs_[si];
        seg.group->reduce_scatter_sum(rs_tmp_.data(), g.buf.data() + (seg.begin - base), seg.chunk, CommDtype::F32);
        float* dst = s_.gshard_.data() + seg.shard_off;
        for (i64 i = 0; i < seg.chunk; ++i) dst[i] += rs_tmp_[i];
      }
      g.unit = -1;
      return;
    }
    MT_CHECK(false, "grads_done for unit ", u, " without grads");
  }
  // Drops every cached gather (parameters changed after an update).
  void invalidate() {
    for (auto& sl : pslots_) {
      MT_CHECK(sl.refs == 0 && !sl.pending, "parameters updated while a unit is held");
      sl.unit = -1;
    }
  }

 private:
  struct PSlot {
    int unit = -1;
    int refs = 0;
    bool pending = false;
    std::vector<std::unique_ptr<CommRequest>> reqs;
    std::vector<float> buf;
    long last_use = 0;
  };
  PSlot* find(int u) {
    for (auto& sl : pslots_)
      if (sl.unit == u) return &sl;
    return nullptr;
  }
  // Every rank makes the same sequence of calls, so collectives match across ranks.
  PSlot* start_gather(int u, bool optional = false) {
    PSlot* victim = nullptr;
    for (auto& sl : pslots_)
      if (sl.refs == 0 && !sl.pending && (!victim || sl.last_use < victim->last_use)) victim = &sl;
    if (!victim && !optional) {
      // A needed unit may take the slot of an unused prefetch: finish that gather, then reuse the slot.
      for (auto& sl : pslots_)
        if (sl.refs == 0 && (!victim || sl.last_use < victim->last_use)) victim = &sl;
      MT_CHECK(victim, "no free parameter slot for unit ", u);
      for (auto& r : victim->reqs) r->wait();
      victim->reqs.clear();
      victim->pending = false;
    }
    if (!victim) return nullptr;
    victim->unit = u;
    victim->last_use = ++clock_;
    victim->pending = true;
    const i64 base = s_.table_.units()[u].begin;
    for (int si : unit_segs_[u]) {
      const Segment& seg = s_.segs_[si];
      victim->reqs.push_back(seg.group->iall_gather(victim->buf.data() + (seg.begin - base),
                                                    s_.pshard_.data() + seg.shard_off, seg.chunk, CommDtype::F32));
    }
    return victim;
  }

  ParamState& s_;
  PSlot pslots_[3];
  struct GSlot {
    int unit = -1;
    std::vector<float> buf;
  } gslots_[2];
  std::vector<float> rs_tmp_;
  std::vector<std::vector<int>> unit_segs_;
  long clock_ = 0;
};

// ---- ParamState ----

ParamState::ParamState(const ParamTable& table, int stage, Communicator& world, Communicator& edp, Communicator& ep)
    : table_(table), stage_(stage), world_(world), edp_(edp), ep_(ep) {
  for (const ParamUnit& u : table.units()) {
    const int unit = int(&u - table.units().data());
    for (int part = 0; part < 2; ++part) {
      const bool expert = part == 1;
      const i64 b = expert ? u.expert_begin : u.begin, e = expert ? u.end : u.expert_begin;
      if (e == b) continue;
      Segment s{unit, expert, b, e, expert ? &edp : &world, 0, 0, 0};
      const i64 g = stage == 0 ? 1 : s.group->size();
      const i64 idx = stage == 0 ? 0 : s.group->rank();
      MT_CHECK((e - b) % g == 0, "segment of unit ", unit, " not padded to the group size ", g);
      s.chunk = (e - b) / g;
      s.mine = b + idx * s.chunk;
      s.shard_off = shard_total_;
      shard_total_ += s.chunk;
      segs_.push_back(s);
    }
  }
  const size_t full = size_t(table.total_numel()), shard = size_t(shard_total_);
  if (stage_ <= 2) {
    params_.assign(full, 0.f);
    grads_.assign(full, 0.f);
    flat_ = std::make_unique<FlatParamAccess<float>>(table_, params_.data(), grads_.data());
  } else {
    pshard_.assign(shard, 0.f);
    z3_ = std::make_unique<Zero3Access>(*this);
  }
  if (stage_ >= 2) gshard_.assign(shard, 0.f);
  exp_avg_.assign(shard, 0.f);
  exp_avg_sq_.assign(shard, 0.f);
}

ParamState::~ParamState() = default;

ParamAccess<float>& ParamState::access() {
  if (z3_) return *z3_;
  return *flat_;
}

std::vector<float>& ParamState::flat_params() {
  MT_CHECK(stage_ <= 2, "flat parameters exist only under ZeRO stages 0-2");
  return params_;
}

const std::vector<float>& ParamState::flat_grads() const {
  MT_CHECK(stage_ <= 2, "flat gradients exist only under ZeRO stages 0-2");
  return grads_;
}

void ParamState::set_params(const std::vector<float>& local_full) {
  MT_CHECK(i64(local_full.size()) == table_.total_numel(), "set_params size mismatch");
  if (stage_ <= 2) {
    params_ = local_full;
    return;
  }
  for (const Segment& s : segs_)
    std::copy(local_full.begin() + s.mine, local_full.begin() + s.mine + s.chunk, pshard_.begin() + s.shard_off);
  z3_->invalidate();
}

std::vector<float> ParamState::local_params() {
  if (stage_ <= 2) return params_;
  std::vector<float> out(size_t(table_.total_numel()), 0.f);
  for (const Segment& s : segs_)
    s.group->all_gather(out.data() + s.begin, pshard_.data() + s.shard_off, s.chunk, CommDtype::F32);
  return out;
}

void ParamState::zero_grads() {
  std::fill(grads_.begin(), grads_.end(), 0.f);
  std::fill(gshard_.begin(), gshard_.end(), 0.f);
}

// contract: C5.clip
double ParamState::reduce_grads() {
  if (stage_ <= 1) {
    for (const Segment& s : segs_) s.group->all_reduce_sum(grads_.data() + s.begin, s.end - s.begin);
    double dense = 0, expert = 0;
    for (const Segment& s : segs_) (s.expert ? expert : dense) += grad_sq_sum(grads_.data() + s.begin, s.end - s.begin);
    ep_.all_reduce_sum(&expert, 1);  // each expert lives on one rank of the EP group
    return std::sqrt(dense + expert);
  }
  if (stage_ == 2)
    for (const Segment& s : segs_)
      s.group->reduce_scatter_sum(gshard_.data() + s.shard_off, grads_.data() + s.begin, s.chunk, CommDtype::F32);
  // Shards partition every dense and expert element exactly once over the world.
  double sq = grad_sq_sum(gshard_.data(), shard_total_);
  world_.all_reduce_sum(&sq, 1);
  return std::sqrt(sq);
}

void ParamState::scale_grads(float coef) {
  std::vector<float>& g = stage_ >= 2 ? gshard_ : grads_;
  float* x = g.data();
  const i64 n = i64(g.size());
#pragma omp parallel for simd schedule(static)
  for (i64 i = 0; i < n; ++i) x[i] *= coef;
}

// contract: C5.adamw
void ParamState::adamw(const TrainConfig& t, double lr, long step) {
  // Every segment chunk's tensor ranges, updated in one parallel pass.
  std::vector<AdamWPiece> pieces;
  for (const Segment& s : segs_) {
    const i64 c0 = s.mine, c1 = s.mine + s.chunk;
    float* p = stage_ == 3 ? pshard_.data() + s.shard_off - c0 : params_.data();
    const float* g = stage_ >= 2 ? gshard_.data() + s.shard_off - c0 : grads_.data();
    float* m = exp_avg_.data() + s.shard_off - c0;
    float* v = exp_avg_sq_.data() + s.shard_off - c0;
    // Tensors of this segment overlapping the chunk; padding has no tensor and stays zero.
    for (const ParamInfo& e : table_.entries()) {
      if (e.unit != s.unit || e.expert != s.expert) continue;
      const i64 a = std::max(c0, e.offset), b = std::min(c1, e.offset + e.numel);
      if (a >= b) continue;
      pieces.push_back({p + a, g + a, m + a, v + a, b - a, e.decay});
    }
  }
  adamw_update_pieces(pieces, AdamWHyper{lr, t.beta1, t.beta2, t.eps, t.weight_decay}, step);
  if (stage_ == 1 || stage_ == 2) {
    for (const Segment& s : segs_)
      s.group->all_gather(params_.data() + s.begin, params_.data() + s.mine, s.chunk, CommDtype::F32);
  }
  if (z3_) z3_->invalidate();
}

void ParamState::checkpoint_pieces(PieceUse use, std::vector<TensorPiece>& model, std::vector<TensorPiece>& exp_avg,
                                   std::vector<TensorPiece>& exp_avg_sq) {
  model.clear();
  exp_avg.clear();
  exp_avg_sq.clear();
  for (const Segment& s : segs_) {
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
      const i64 c = std::max(m0, e.offset), d = std::min(m1, e.offset + e.numel);
      if (c < d) {
        exp_avg.push_back({e.name, c - e.offset, d - e.offset, exp_avg_.data() + s.shard_off + (c - s.mine)});
        exp_avg_sq.push_back({e.name, c - e.offset, d - e.offset, exp_avg_sq_.data() + s.shard_off + (c - s.mine)});
      }
    }
  }
}

void ParamState::after_load() {
  if (z3_) z3_->invalidate();
}

StateBytes ParamState::bytes() const {
  StateBytes b;
  b.params = i64(4 * (params_.size() + pshard_.size()));
  b.grads = i64(4 * (grads_.size() + gshard_.size()));
  b.optimizer = i64(4 * (exp_avg_.size() + exp_avg_sq_.size()));
  b.working = z3_ ? z3_->working_bytes() : 0;
  return b;
}

}  // namespace moe
