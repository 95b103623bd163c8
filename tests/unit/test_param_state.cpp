// Owns the single-process tests of the parameter-table contract and ParamState: expert order, storage fields,
// frozen entries, the bf16 compute copy, ZeRO-2 gradient bytes, the shared sizing function and BF16 comm dtype.
#include <gtest/gtest.h>

#include <cstring>

#include "comm/communicator.h"
#include "config/config.h"
#include "fake_unit_model.h"
#include "model/param_table.h"
#include "parallel/zero.h"
#include "train/memory_plan.h"

using namespace moe;
using namespace moe::testing;

TEST(ParamTable, ExpertGateUpAdjacentThenDown) {
  for (ExpertRange r : {ExpertRange{}, ExpertRange{2, 2}}) {
    const ModelConfig m = tiny_state_model();
    const ParamTable t = build_param_table(m, r, 1, 3);
    const i64 H = m.hidden_size, I = m.expert_width();
    const int first = r.count < 0 ? 0 : r.first, count = r.count < 0 ? m.num_experts : r.count;
    for (int l = 0; l < m.num_layers; ++l) {
      const LayerNames n = layer_names(m, l);
      const i64 seg = t.units()[l + 1].expert_begin;
      for (int j = 0; j < count; ++j) {
        const int e = first + j;
        EXPECT_EQ(t.at(n.w1[e]).offset, seg + j * 2 * I * H) << n.w1[e];        // [w1; w3] blocks, stride 2IH
        EXPECT_EQ(t.at(n.w3[e]).offset, t.at(n.w1[e]).offset + I * H) << n.w3[e];  // up right after gate
        EXPECT_EQ(t.at(n.w2[e]).offset, seg + count * 2 * I * H + j * H * I) << n.w2[e];  // then every w2
      }
      // Padding (expert_pad 3) after the last w2, inside the unit.
      EXPECT_GE(t.units()[l + 1].end, seg + count * 3 * I * H);
    }
  }
}

TEST(ParamTable, StorageFieldsAndFreezing) {
  ParamTable t = build_param_table(tiny_state_model());
  for (const ParamInfo& e : t.entries()) {
    EXPECT_EQ(e.dtype, DType::F32);
    EXPECT_EQ(e.kind, StorageKind::Dense);
    EXPECT_TRUE(e.trainable);
    EXPECT_EQ(e.byte_offset, 4 * e.offset) << e.name;
  }
  EXPECT_EQ(t.trainable_numel(), t.tensor_numel());
  t.set_trainable("model.embed_tokens.weight", false);
  EXPECT_FALSE(t.at("model.embed_tokens.weight").trainable);
  EXPECT_EQ(t.trainable_numel(), t.tensor_numel() - t.at("model.embed_tokens.weight").numel);
  EXPECT_THROW(t.set_trainable("no.such.weight", false), Error);
  t.set_storage("lm_head.weight", DType::BF16, StorageKind::Dense);
  EXPECT_EQ(t.at("lm_head.weight").byte_offset, 2 * t.at("lm_head.weight").offset);
}

TEST(ParamState, RefusesNf4AndNonF32Storage) {
  auto self = make_self_communicator();
  ParamTable t = build_param_table(tiny_state_model());
  t.set_storage("model.layers.0.self_attn.q_proj.weight", DType::NF4, StorageKind::Nf4Blocks);
  EXPECT_THROW(ParamState(t, 0, *self, *self, *self), Error);
  ParamTable u = build_param_table(tiny_state_model());
  u.set_storage("model.layers.0.self_attn.q_proj.weight", DType::BF16, StorageKind::Dense);
  EXPECT_THROW(ParamState(u, 3, *self, *self, *self), Error);
}

// Trains `steps` fake steps of `micro` micro-batches each; returns the final master weights (table layout).
template <typename T>
static std::vector<float> fake_train(ParamState& st, const ParamTable& t, int steps, int micro, int rank,
                                     std::vector<double>* norms = nullptr, double clip = 0) {
  TrainConfig tc;
  tc.weight_decay = 0.1;
  st.set_params(fake_init(t));
  for (int s = 0; s < steps; ++s) {
    st.zero_grads();
    for (int m = 0; m < micro; ++m) {
      if constexpr (std::is_same_v<T, bf16>)
        fake_micro_batch<bf16>(st.access_bf16(), t, s * micro + m, rank);
      else
        fake_micro_batch<float>(st.access(), t, s * micro + m, rank);
    }
    const double norm = st.reduce_grads();
    if (norms) norms->push_back(norm);
    const double c = clip_coef(norm, clip);
    if (c < 1.0) st.scale_grads(float(c));
    st.adamw(tc, 0.01, long(s) + 1);
  }
  return st.local_params();
}

static std::vector<std::string> frozen_names(const ModelConfig& m) {
  const LayerNames n0 = layer_names(m, 0), n1 = layer_names(m, 1);
  return {"model.embed_tokens.weight", n0.q, n0.w1[1], n0.w2[1], n1.w3[3], n1.router, n1.input_norm};
}

// Frozen entries: bitwise unchanged after steps, trainable ones bitwise as in an all-trainable run (the fake
// gradients do not depend on the weights), no gradient/moment bytes for them, under every ZeRO stage.
TEST(ParamState, FrozenEntriesUnchangedAndUnbilled) {
  auto self = make_self_communicator();
  const ModelConfig m = tiny_state_model();
  for (int stage = 0; stage <= 3; ++stage) {
    for (int micro : {1, 2}) {
      SCOPED_TRACE("stage " + std::to_string(stage) + ", micro-batches " + std::to_string(micro));
      const ParamTable all = build_param_table(m);
      ParamTable part = build_param_table(m);
      i64 frozen = 0;
      for (const std::string& n : frozen_names(m)) {
        part.set_trainable(n, false);
        frozen += part.at(n).numel;
      }
      ParamState sa(all, stage, *self, *self, *self), sp(part, stage, *self, *self, *self);
      const std::vector<float> init = fake_init(all);
      const std::vector<float> wa = fake_train<float>(sa, all, 3, micro, 0);
      const std::vector<float> wp = fake_train<float>(sp, part, 3, micro, 0);
      i64 moved = 0;
      for (const ParamInfo& e : part.entries()) {
        const size_t o = size_t(e.offset), n = size_t(e.numel);
        if (!e.trainable) {
          EXPECT_EQ(std::memcmp(wp.data() + o, init.data() + o, n * 4), 0) << e.name << " (frozen) changed";
        } else {
          EXPECT_EQ(std::memcmp(wp.data() + o, wa.data() + o, n * 4), 0) << e.name << " differs from the all-trainable run";
          moved += std::memcmp(wp.data() + o, init.data() + o, n * 4) != 0;
        }
      }
      EXPECT_EQ(moved, i64(part.entries().size() - frozen_names(m).size()));
      const StateBytes ba = sa.bytes(), bp = sp.bytes();
      EXPECT_EQ(ba.optimizer - bp.optimizer, 8 * frozen);
      EXPECT_EQ(ba.params, bp.params);  // frozen weights are still held
      if (stage >= 2) EXPECT_EQ(ba.grads - bp.grads, 4 * frozen);
      else EXPECT_EQ(bp.grads, 4 * (all.total_numel() - frozen));  // stages 0-1: the compact trainable gradients
      EXPECT_FALSE(sp.has_flat_grads());
    }
  }
}

// The bf16 copy equals round_bf16(master) elementwise after set_params and after each update, as the model reads
// it (every unit through access_bf16), under every stage; gradients through it are the fp32 ones.
TEST(ParamState, Bf16CopyIsRoundedMaster) {
  auto self = make_self_communicator();
  for (bool tied : {false, true}) {
    const ModelConfig m = tiny_state_model(tied ? Arch::Qwen3Moe : Arch::Mixtral, tied);
    const ParamTable t = build_param_table(m);
    for (int stage = 0; stage <= 3; ++stage) {
      SCOPED_TRACE("stage " + std::to_string(stage) + (tied ? ", tied qwen3" : ""));
      ParamState s32(t, stage, *self, *self, *self), s16(t, stage, *self, *self, *self, Precision::Bf16);
      const std::vector<float> w32 = fake_train<float>(s32, t, 2, 2, 0);
      const std::vector<float> w16 = fake_train<bf16>(s16, t, 2, 2, 0);
      EXPECT_EQ(std::memcmp(w32.data(), w16.data(), w32.size() * 4), 0) << "fp32 masters differ";
      std::vector<float> seen, seen_acc;
      s16.zero_grads();
      fake_micro_batch<bf16>(s16.access_bf16(), t, 0, 0, &seen, 1, &seen_acc);
      const std::vector<float> master = s16.local_params();
      i64 inexact = 0;
      for (const ParamInfo& e : t.entries())
        for (i64 i = 0; i < e.numel; ++i) {
          const size_t k = size_t(e.offset + i);
          ASSERT_EQ(seen[k], round_bf16(master[k])) << e.name << "[" << i << "]";
          // params_acc: the fp32 master itself (router weight and norm gains are read from it, DESIGN §8).
          ASSERT_EQ(std::memcmp(&seen_acc[k], &master[k], 4), 0) << e.name << "[" << i << "] (params_acc)";
          inexact += seen[k] != master[k];
        }
      EXPECT_GT(inexact, 0);  // the copy really is bf16
      const StateBytes b = s16.bytes();
      // Stages 0–2 keep a flat bf16 copy; stage 3 rounds each gathered fp32 unit into bf16 working slots.
      EXPECT_EQ(b.compute_copy, stage == 3 ? 0 : 2 * t.total_numel());
      i64 max_unit = 0;
      for (const ParamUnit& u : t.units()) max_unit = std::max(max_unit, u.size());
      if (stage == 3) {
        EXPECT_EQ(b.working - b.grad_slots, 3 * max_unit * (4 + 2));
      }
      if (stage == 3) {
        EXPECT_THROW(s16.access(), Error);
      }
    }
  }
}

// One process: the sizing function is what the state allocates.
TEST(ParamState, PlanBytesIsWhatStateHolds) {
  auto self = make_self_communicator();
  ParamTable t = build_param_table(tiny_state_model());
  t.set_trainable("model.layers.1.self_attn.k_proj.weight", false);
  for (int stage = 0; stage <= 3; ++stage)
    for (Precision p : {Precision::Fp32, Precision::Bf16}) {
      ParamState s(t, stage, *self, *self, *self, p);
      const StateBytes a = s.bytes(), b = ParamState::plan_bytes(t, stage, 1, 1, p);
      EXPECT_EQ(a.params, b.params);
      EXPECT_EQ(a.grads, b.grads);
      EXPECT_EQ(a.optimizer, b.optimizer);
      EXPECT_EQ(a.compute_copy, b.compute_copy);
      EXPECT_EQ(a.working, b.working);
    }
}

// ZeRO-2 keeps a gradient shard plus two unit slots (one the backward writes, one whose reduce-scatter is in
// flight): ≤ ZeRO-1's gradients / world + two units (tables padded as Trainer pads them, ep 1, world 4 and 16).
TEST(ParamState, Zero2GradientBytesPlan) {
  const ModelConfig m = tiny_state_model();
  for (int world : {4, 16}) {
    const ParamTable t = build_param_table(m, {}, world, world);
    i64 max_unit = 0;
    for (const ParamUnit& u : t.units()) max_unit = std::max(max_unit, u.size());
    const StateBytes z1 = ParamState::plan_bytes(t, 1, world, world, Precision::Fp32);
    const StateBytes z2 = ParamState::plan_bytes(t, 2, world, world, Precision::Fp32);
    EXPECT_LE(z2.grads + z2.grad_slots, z1.grads / world + 2 * 4 * max_unit) << "world " << world;
    EXPECT_EQ(z2.grads, z1.grads / world);
    EXPECT_EQ(z2.grad_slots, 2 * 4 * max_unit);
  }
}

// The Mixtral dry-run plan (16 ranks, ep 8 as configured) from the same function: ZeRO-2 gradients ≤ the
// whole model's / world + two units of rank 0's padded table (the open slot and the one in flight; + segment
// padding), far below ZeRO-1's.
TEST(MemoryPlan, MixtralZero2GradientsSharded) {
  const std::string cfg = std::string(MOE_SOURCE_DIR) + "/configs/mixtral.yaml";
  const Config c1 = load_config(cfg, {"parallel.zero=1", "train.device=cpu"});
  const Config c2 = load_config(cfg, {"parallel.zero=2", "train.device=cpu"});
  const MemoryPlan p1 = plan_memory(c1, 16), p2 = plan_memory(c2, 16);
  const int ep = c2.parallel.ep;
  const ParamTable t = build_param_table(c2.model, {0, c2.model.num_experts / ep}, 16, 16 / ep);
  i64 max_unit = 0;
  for (const ParamUnit& u : t.units()) max_unit = std::max(max_unit, u.size());
  const i64 whole_grads = 4 * p1.params;
  EXPECT_LE(p2.grad_bytes + p2.grad_slot_bytes, whole_grads / 16 + 2 * 4 * max_unit + (i64(64) << 10));
  EXPECT_EQ(p2.grad_slot_bytes, 2 * 4 * max_unit);
  EXPECT_LT(p2.grad_bytes + p2.grad_slot_bytes, p1.grad_bytes / 2);
  EXPECT_EQ(p1.grad_slot_bytes, 0);
}

TEST(Communicator, Bf16MovedNotSummed) {
  auto self = make_self_communicator();
  EXPECT_EQ(self->buffer_space(), MemSpace::Host);
  EXPECT_EQ(comm_dtype_bytes(CommDtype::BF16), 2u);
  std::vector<bf16> a = {bf16(1.5f), bf16(-2.25f), bf16(3.0e-3f)}, b(3, bf16(0.f));
  self->all_gather(b.data(), a.data(), 3, CommDtype::BF16);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), 6), 0);
  EXPECT_THROW(self->all_reduce_sum(a.data(), 3, CommDtype::BF16), Error);
  EXPECT_THROW(self->reduce_scatter_sum(b.data(), a.data(), 3, CommDtype::BF16), Error);
}
