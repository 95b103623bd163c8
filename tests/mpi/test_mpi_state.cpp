// Owns the multi-rank ParamState tests: frozen entries and the bf16 compute copy under ZeRO 0–3 (ep 1 and 2)
// against a one-process reference, ZeRO-2 gradient bytes measured, the sizing function per rank, BF16 comm, the
// MPI non-blocking reduce-scatter, and the ZeRO 2–3 reduce-scatter overlap (recorded order, bitwise results).
#include <gtest/gtest.h>

#include "mpi_gtest_main.h"

#include <cstring>
#include <map>

#include "../unit/fake_unit_model.h"
#include "../unit/recording_comm.h"
#include "comm/communicator.h"
#include "model/param_table.h"
#include "optim/adamw.h"
#include "parallel/zero.h"
#include "train/runtime.h"

using namespace moe;
using namespace moe::testing;

static Runtime* g_rt = nullptr;

static std::vector<std::string> frozen_names(const ModelConfig& m) {
  const LayerNames n0 = layer_names(m, 0), n1 = layer_names(m, 1);
  return {"model.embed_tokens.weight", n0.q, n0.w1[1], n0.w2[1], n1.w3[3], n1.w1[2], n1.router, n1.input_norm};
}

// The groups of a layout (as Trainer splits them) and this rank's padded table.
struct Layout {
  std::unique_ptr<Communicator> ep, edp;
  ParamTable table;
};
static Layout make_layout(const ModelConfig& m, int ep, int stage, bool freeze) {
  Communicator& w = *g_rt->world;
  Layout L;
  L.ep = w.split(w.rank() / ep, w.rank());
  L.edp = w.split(w.rank() % ep, w.rank());
  ExpertRange r;
  if (ep > 1) r = {(w.rank() % ep) * (m.num_experts / ep), m.num_experts / ep};
  L.table = build_param_table(m, r, stage >= 1 ? w.size() : 1, stage >= 1 ? L.edp->size() : 1);
  if (freeze)
    for (const std::string& n : frozen_names(m))
      if (L.table.find(n)) L.table.set_trainable(n, false);
  return L;
}

constexpr double kClip = 0.5;

// `steps` fake steps, `micro` micro-batches per rank; every rank's gradients enter the sum.
template <typename T>
static std::vector<float> train(ParamState& st, const ParamTable& t, int steps, int micro, int rank, int ep,
                                std::vector<double>& norms) {
  TrainConfig tc;
  tc.weight_decay = 0.1;
  st.set_params(fake_init(t));
  for (int s = 0; s < steps; ++s) {
    st.zero_grads();
    for (int m = 0; m < micro; ++m) {
      if constexpr (std::is_same_v<T, bf16>)
        fake_micro_batch<bf16>(st.access_bf16(), t, s * micro + m, rank, nullptr, ep);
      else
        fake_micro_batch<float>(st.access(), t, s * micro + m, rank, nullptr, ep);
    }
    const double norm = st.reduce_grads();
    norms.push_back(norm);
    const double c = clip_coef(norm, kClip);
    if (c < 1.0) st.scale_grads(float(c));
    st.adamw(tc, 0.01, long(s) + 1);
  }
  return st.local_params();
}

// One process doing every rank's micro-batches (fake gradients sum exactly, so the bits must agree).
static std::vector<float> reference(const ModelConfig& m, bool freeze, int steps, int micro, std::vector<double>& norms) {
  auto self = make_self_communicator();
  ParamTable t = build_param_table(m);
  if (freeze)
    for (const std::string& n : frozen_names(m)) t.set_trainable(n, false);
  ParamState st(t, 0, *self, *self, *self);
  TrainConfig tc;
  tc.weight_decay = 0.1;
  st.set_params(fake_init(t));
  const int W = g_rt->world->size();
  for (int s = 0; s < steps; ++s) {
    st.zero_grads();
    for (int mb = 0; mb < micro; ++mb)
      for (int r = 0; r < W; ++r) fake_micro_batch<float>(st.access(), t, s * micro + mb, r);
    const double norm = st.reduce_grads();
    norms.push_back(norm);
    const double c = clip_coef(norm, kClip);
    if (c < 1.0) st.scale_grads(float(c));
    st.adamw(tc, 0.01, long(s) + 1);
  }
  return st.local_params();
}

template <typename T>
static void check_against_reference(bool freeze) {
  Communicator& w = *g_rt->world;
  const ModelConfig m = tiny_state_model();
  const int steps = 3, micro = 2;
  std::vector<double> ref_norms;
  const std::vector<float> ref = reference(m, freeze, steps, micro, ref_norms);
  const ParamTable full = build_param_table(m);
  const std::vector<float> init = fake_init(full);
  for (int ep : {1, 2}) {
    if (w.size() % ep) continue;
    for (int stage = 0; stage <= 3; ++stage) {
      SCOPED_TRACE("ep " + std::to_string(ep) + ", stage " + std::to_string(stage) + ", world " + std::to_string(w.size()));
      Layout L = make_layout(m, ep, stage, freeze);
      ParamState st(L.table, stage, w, *L.edp, *L.ep, std::is_same_v<T, bf16> ? Precision::Bf16 : Precision::Fp32);
      std::vector<double> norms;
      const std::vector<float> got = train<T>(st, L.table, steps, micro, w.rank(), ep, norms);
      EXPECT_EQ(norms, ref_norms);
      for (const ParamInfo& e : L.table.entries()) {
        const ParamInfo& f = full.at(e.name);
        const bool same = std::memcmp(got.data() + e.offset, ref.data() + f.offset, size_t(e.numel) * 4) == 0;
        EXPECT_TRUE(same) << e.name << " differs from the one-process reference";
        if (!e.trainable)
          EXPECT_EQ(std::memcmp(got.data() + e.offset, init.data() + f.offset, size_t(e.numel) * 4), 0)
              << e.name << " (frozen) changed";
      }
      if (std::is_same_v<T, bf16>) {
        // What the model reads through access_bf16 is round_bf16 of the master, every element, every unit;
        // params_acc is the fp32 master itself.
        std::vector<float> seen, seen_acc;
        st.zero_grads();
        fake_micro_batch<bf16>(st.access_bf16(), L.table, 0, w.rank(), &seen, ep, &seen_acc);
        st.zero_grads();
        for (const ParamInfo& e : L.table.entries())
          for (i64 i = 0; i < e.numel; ++i) {
            const size_t k = size_t(e.offset + i);
            ASSERT_EQ(seen[k], round_bf16(got[k])) << e.name << "[" << i << "]";
            ASSERT_EQ(std::memcmp(&seen_acc[k], &got[k], 4), 0) << e.name << "[" << i << "] (params_acc)";
          }
      }
      // The sizing function at this rank's position is what the state holds.
      const StateBytes a = st.bytes();
      const StateBytes b = ParamState::plan_bytes(L.table, stage, w.size(), L.edp->size(), st.precision(), w.rank(),
                                                  L.edp->rank());
      EXPECT_EQ(a.params, b.params);
      EXPECT_EQ(a.grads, b.grads);
      EXPECT_EQ(a.optimizer, b.optimizer);
      EXPECT_EQ(a.compute_copy, b.compute_copy);
      EXPECT_EQ(a.working, b.working);
    }
  }
}

TEST(State, AllTrainableMatchesOneProcess) { check_against_reference<float>(false); }
TEST(State, FrozenEntriesNeverUpdatedMatchOneProcess) { check_against_reference<float>(true); }
TEST(State, Bf16CopyUnderEveryStage) { check_against_reference<bf16>(false); }
TEST(State, Bf16CopyWithFrozenEntries) { check_against_reference<bf16>(true); }

// Frozen entries cost no gradient or moment bytes (summed over ranks: exactly the frozen share).
TEST(State, FrozenShareNotBilled) {
  Communicator& w = *g_rt->world;
  const ModelConfig m = tiny_state_model();
  for (int stage = 0; stage <= 3; ++stage) {
    Layout A = make_layout(m, 1, stage, false), F = make_layout(m, 1, stage, true);
    ParamState sa(A.table, stage, w, *A.edp, *A.ep), sf(F.table, stage, w, *F.edp, *F.ep);
    int64_t d[2] = {sa.bytes().optimizer - sf.bytes().optimizer, sa.bytes().grads - sf.bytes().grads};
    w.all_reduce_sum(d, 2);
    const i64 frozen = A.table.tensor_numel() - F.table.trainable_numel();
    EXPECT_EQ(d[0], 8 * frozen * (stage == 0 ? w.size() : 1)) << "stage " << stage;
    if (stage >= 2) EXPECT_EQ(d[1], 4 * frozen) << "stage " << stage;
  }
}

// ZeRO-2 measured on ParamState::bytes(): gradient shard + two unit slots (open, in flight) ≤ ZeRO-1's gradients /
// world + two units.
TEST(State, Zero2GradientBytesMeasured) {
  Communicator& w = *g_rt->world;
  const ModelConfig m = tiny_state_model();
  Layout L1 = make_layout(m, 1, 1, false), L2 = make_layout(m, 1, 2, false);
  ParamState s1(L1.table, 1, w, *L1.edp, *L1.ep), s2(L2.table, 2, w, *L2.edp, *L2.ep);
  i64 max_unit = 0;
  for (const ParamUnit& u : L2.table.units()) max_unit = std::max(max_unit, u.size());
  const StateBytes b1 = s1.bytes(), b2 = s2.bytes();
  EXPECT_LE(b2.grads + b2.grad_slots, b1.grads / w.size() + 2 * 4 * max_unit);
  EXPECT_EQ(b2.grad_slots, 2 * 4 * max_unit);
  if (w.rank() == 0)
    std::printf("  [zero-2 world=%d] grads %lld B + slots %lld B; zero-1 grads %lld B\n", w.size(), (long long)b2.grads,
                (long long)b2.grad_slots, (long long)b1.grads);
}

TEST(State, Bf16Collectives) {
  Communicator& w = *g_rt->world;
  const int W = w.size(), R = w.rank();
  EXPECT_EQ(w.buffer_space(), MemSpace::Host);
  auto val = [](int from, int to, int j) { return bf16(float(from * 100 + to * 10 + j) / 7.f); };
  std::vector<bf16> mine = {val(R, 0, 0), val(R, 0, 1)}, all(size_t(2 * W), bf16(0.f));
  w.all_gather(all.data(), mine.data(), 2, CommDtype::BF16);
  for (int r = 0; r < W; ++r)
    for (int j = 0; j < 2; ++j) EXPECT_EQ(all[size_t(2 * r + j)].bits, val(r, 0, j).bits);
  std::vector<bf16> send(size_t(2 * W)), recv(size_t(2 * W), bf16(0.f));
  std::vector<i64> cnt(size_t(W), 2), dis(size_t(W), 0);
  for (int p = 0; p < W; ++p) {
    dis[size_t(p)] = 2 * p;
    send[size_t(2 * p)] = val(R, p, 0);
    send[size_t(2 * p + 1)] = val(R, p, 1);
  }
  w.all_to_all_v(send.data(), cnt.data(), dis.data(), recv.data(), cnt.data(), dis.data(), CommDtype::BF16);
  for (int p = 0; p < W; ++p)
    for (int j = 0; j < 2; ++j) EXPECT_EQ(recv[size_t(2 * p + j)].bits, val(p, R, j).bits);
  bf16 b = R == W - 1 ? bf16(1.25f) : bf16(0.f);
  w.broadcast(&b, 1, CommDtype::BF16, W - 1);
  EXPECT_EQ(float(b), 1.25f);
  EXPECT_THROW(w.all_reduce_sum(mine.data(), 2, CommDtype::BF16), Error);
  EXPECT_THROW(w.reduce_scatter_sum(mine.data(), all.data(), 2, CommDtype::BF16), Error);
}

// ireduce_scatter_sum over MPI: several in flight at once, in place (any rank's chunk) and out of place, each
// bitwise equal to the blocking reduce_scatter_sum of the same data (values sum exactly).
TEST(State, IreduceScatterMatchesBlocking) {
  Communicator& w = *g_rt->world;
  const int W = w.size(), R = w.rank();
  const i64 n = 37;
  auto fill = [&](std::vector<float>& v, int salt) {
    v.resize(size_t(W * n));
    for (size_t i = 0; i < v.size(); ++i) v[i] = float(int((i * 7 + size_t(R) * 13 + size_t(salt)) % 29) - 14) / 8.f;
  };
  std::vector<float> a, b, c, ref_a, ref_c;
  fill(a, 1), fill(b, 2), fill(c, 3);
  std::vector<float> ref_in = a, ref_out(static_cast<size_t>(n));
  w.reduce_scatter_sum(ref_out.data(), ref_in.data(), n, CommDtype::F32);
  std::vector<float> ref_in_c = c, ref_out_c(static_cast<size_t>(n));
  w.reduce_scatter_sum(ref_out_c.data(), ref_in_c.data(), n, CommDtype::F32);
  std::vector<float> out_b(static_cast<size_t>(n));
  CommRequest qa, qb, qc;
  w.ireduce_scatter_sum(a.data() + R * n, a.data(), n, CommDtype::F32, qa);  // in place
  w.ireduce_scatter_sum(out_b.data(), b.data(), n, CommDtype::F32, qb);      // out of place
  w.ireduce_scatter_sum(c.data() + R * n, c.data(), n, CommDtype::F32, qc);  // in place
  EXPECT_TRUE(qa.pending && qb.pending && qc.pending);
  w.wait(qc);  // completion order need not be start order
  w.wait(qa);
  w.wait(qb);
  EXPECT_FALSE(qa.pending || qb.pending || qc.pending);
  EXPECT_EQ(std::memcmp(a.data() + R * n, ref_out.data(), size_t(n) * 4), 0);
  EXPECT_EQ(std::memcmp(c.data() + R * n, ref_out_c.data(), size_t(n) * 4), 0);
  // b's sum through the blocking call (b was only read).
  std::vector<float> ref_out_b(static_cast<size_t>(n));
  w.reduce_scatter_sum(ref_out_b.data(), b.data(), n, CommDtype::F32);
  EXPECT_EQ(std::memcmp(out_b.data(), ref_out_b.data(), size_t(n) * 4), 0);
  CommRequest q;
  EXPECT_THROW(w.ireduce_scatter_sum(out_b.data(), b.data(), n, CommDtype::BF16, q), Error);
}

// ZeRO 2–3 on MPI (ep 1 and 2, frozen entries or not): each unit's reduce-scatter starts in grads_done and is
// waited only after the next unit's gradients were requested, in start order (recorded on the world and
// expert-data-parallel communicators); weights and norms bitwise those of the one-process reference.
TEST(State, ReduceScatterOverlapsBackward) {
  Communicator& w = *g_rt->world;
  const ModelConfig m = tiny_state_model();
  const int steps = 2, micro = 2;
  for (bool freeze : {false, true}) {
    std::vector<double> ref_norms;
    const std::vector<float> ref = reference(m, freeze, steps, micro, ref_norms);
    const ParamTable full = build_param_table(m);
    for (int ep : {1, 2}) {
      if (w.size() % ep) continue;
      for (int stage : {2, 3}) {
        SCOPED_TRACE("ep " + std::to_string(ep) + ", stage " + std::to_string(stage) + ", frozen " +
                     std::to_string(freeze));
        CommLog log;
        RecordingComm rw(w, log, Withhold::No);
        auto ep_c = rw.split(w.rank() / ep, w.rank());
        auto edp = rw.split(w.rank() % ep, w.rank());
        ExpertRange r;
        if (ep > 1) r = {(w.rank() % ep) * (m.num_experts / ep), m.num_experts / ep};
        ParamTable t = build_param_table(m, r, w.size(), edp->size());
        if (freeze)
          for (const std::string& n : frozen_names(m))
            if (t.find(n)) t.set_trainable(n, false);
        ParamState st(t, stage, rw, *edp, *ep_c);
        TrainConfig tc;
        tc.weight_decay = 0.1;
        st.set_params(fake_init(t));
        std::vector<double> norms;
        for (int s = 0; s < steps; ++s) {
          st.zero_grads();
          for (int mb = 0; mb < micro; ++mb) {
            RecordingAccess<float> a(st.access(), log);
            fake_micro_batch<float>(a, t, s * micro + mb, w.rank(), nullptr, ep);
          }
          const double norm = st.reduce_grads();
          log.push_back({CommEvent::Mark, s});
          norms.push_back(norm);
          const double c = clip_coef(norm, kClip);
          if (c < 1.0) st.scale_grads(float(c));
          st.adamw(tc, 0.01, long(s) + 1);
        }
        int overlapped = 0;
        EXPECT_EQ(overlap_violation(log, &overlapped), "");
        EXPECT_GT(overlapped, 0);
        const std::vector<float> got = st.local_params();
        EXPECT_EQ(norms, ref_norms);
        for (const ParamInfo& e : t.entries())
          EXPECT_EQ(std::memcmp(got.data() + e.offset, ref.data() + full.at(e.name).offset, size_t(e.numel) * 4), 0)
              << e.name << " differs from the one-process reference";
      }
    }
  }
}

MOE_MPI_GTEST_MAIN(g_rt)
