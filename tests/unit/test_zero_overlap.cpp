// Owns the single-process ZeroOverlap.* tests: under ZeRO 2–3 each unit's gradient reduce-scatter is started by
// grads_done() and completed only after the next unit's gradients were requested (recorded call sequence), with
// results withheld until the wait and bitwise equal to the unsharded (ZeRO-0) run.
#include <gtest/gtest.h>

#include <cstring>

#include "comm/communicator.h"
#include "fake_unit_model.h"
#include "model/param_table.h"
#include "optim/adamw.h"
#include "parallel/zero.h"
#include "recording_comm.h"

using namespace moe;
using namespace moe::testing;

// `steps` fake steps of `micro` micro-batches through a RecordingAccess (Mark after each reduce_grads).
template <typename T>
static std::vector<float> train(ParamState& st, const ParamTable& t, int steps, int micro, CommLog& log) {
  TrainConfig tc;
  tc.weight_decay = 0.1;
  st.set_params(fake_init(t));
  for (int s = 0; s < steps; ++s) {
    st.zero_grads();
    for (int m = 0; m < micro; ++m) {
      if constexpr (std::is_same_v<T, bf16>) {
        RecordingAccess<bf16> a(st.access_bf16(), log);
        fake_micro_batch<bf16>(a, t, s * micro + m, 0);
      } else {
        RecordingAccess<float> a(st.access(), log);
        fake_micro_batch<float>(a, t, s * micro + m, 0);
      }
    }
    const double norm = st.reduce_grads();
    log.push_back({CommEvent::Mark, s});
    const double c = clip_coef(norm, 0.5);
    if (c < 1.0) st.scale_grads(float(c));
    st.adamw(tc, 0.01, long(s) + 1);
  }
  return st.local_params();
}

template <typename T>
static void check_overlap(Arch arch, bool tied, bool freeze) {
  const ModelConfig m = tiny_state_model(arch, tied, 3);
  ParamTable t = build_param_table(m);
  if (freeze) {
    // A dense and an expert entry frozen: both segments of those units are packed before their reduce-scatter.
    const LayerNames n0 = layer_names(m, 0), n1 = layer_names(m, 1);
    for (const std::string& n : {n0.q, n1.router, n1.w1[1]}) t.set_trainable(n, false);
  }
  const Precision prec = std::is_same_v<T, bf16> ? Precision::Bf16 : Precision::Fp32;
  const int steps = 2, micro = 2;
  i64 segments = 0;  // dense and expert parts of every unit
  for (const ParamUnit& u : t.units()) segments += int(u.expert_begin > u.begin) + int(u.end > u.expert_begin);
  auto self = make_self_communicator();
  CommLog ref_log;
  ParamState ref(t, 0, *self, *self, *self, prec);
  const std::vector<float> want = train<T>(ref, t, steps, micro, ref_log);
  for (int stage : {2, 3}) {
    SCOPED_TRACE("stage " + std::to_string(stage));
    CommLog log;
    RecordingComm rec(*self, log, Withhold::Yes);
    ParamState st(t, stage, rec, rec, rec, prec);
    const std::vector<float> got = train<T>(st, t, steps, micro, log);
    int overlapped = 0;
    EXPECT_EQ(overlap_violation(log, &overlapped), "");
    i64 starts = 0;
    for (const CommEvent& e : log) starts += e.kind == CommEvent::Start;
    EXPECT_GT(starts, 0);
    // Every reduce-scatter but those of the step's last unit (unit 0, completed by reduce_grads) is still pending
    // when the model asks for the next unit's gradients.
    const ParamUnit& u0 = t.units()[0];
    const int segs0 = int(u0.expert_begin > u0.begin) + int(u0.end > u0.expert_begin);
    EXPECT_EQ(starts, i64(steps) * micro * segments);
    EXPECT_EQ(overlapped, starts - steps * segs0);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0)
        << "weights differ from the ZeRO-0 run";
  }
}

TEST(ZeroOverlap, Fp32ReduceScatterStartedAtGradsDoneWaitedLater) { check_overlap<float>(Arch::Mixtral, false, false); }
TEST(ZeroOverlap, FrozenEntriesPackedPerSlot) { check_overlap<float>(Arch::Mixtral, false, true); }
TEST(ZeroOverlap, TiedEmbeddingSlotStaysOpen) { check_overlap<float>(Arch::Qwen3Moe, true, true); }
TEST(ZeroOverlap, Bf16) { check_overlap<bf16>(Arch::Qwen3Moe, false, false); }

// The slot a reduce-scatter is in flight from is not handed out again before the wait (withheld results read
// NaN until then: any reuse or early read would show in the weights or as Clobbered).
TEST(ZeroOverlap, ZeroGradsCompletesWhatIsInFlight) {
  const ModelConfig m = tiny_state_model(Arch::Mixtral, false, 3);
  const ParamTable t = build_param_table(m);
  auto self = make_self_communicator();
  CommLog log;
  RecordingComm rec(*self, log, Withhold::Yes);
  ParamState st(t, 2, rec, rec, rec);
  st.set_params(fake_init(t));
  st.zero_grads();
  RecordingAccess<float> a(st.access(), log);
  fake_micro_batch<float>(a, t, 0, 0);
  i64 starts = 0, waits = 0;
  for (const CommEvent& e : log) starts += e.kind == CommEvent::Start, waits += e.kind == CommEvent::Wait;
  EXPECT_LT(waits, starts);  // some still in flight after the backward
  st.zero_grads();
  waits = 0;
  for (const CommEvent& e : log) waits += e.kind == CommEvent::Wait;
  EXPECT_EQ(waits, starts);
  EXPECT_EQ(overlap_violation(log), "");
}
