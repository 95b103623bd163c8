// Tests the router-health metric definitions (DESIGN §6) on hand-made routing: collapse, perfect balance, capacity
// dropping, churn, logit norm, per-layer aux/z, and the phase timer's names and accounting.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "backend/moe_ops.h"
#include "model/model.h"
#include "moe/phase_timer.h"
#include "moe/plan.h"
#include "train/model_flops.h"
#include "train/router_health.h"

using namespace moe;

TEST(RouterHealth, CollapseOnOneExpert) {
  // Every token's single choice is expert 2 of 8: one expert used, imbalance E, entropy 0.
  const RouterHealth h = layer_health({0, 0, 64, 0, 0, 0, 0, 0});
  EXPECT_DOUBLE_EQ(h.expert_utilization, 1.0 / 8);
  EXPECT_DOUBLE_EQ(h.load_imbalance, 8.0);
  EXPECT_DOUBLE_EQ(h.routing_entropy, 0.0);
}

TEST(RouterHealth, PerfectBalance) {
  const RouterHealth h = layer_health({16, 16, 16, 16});
  EXPECT_DOUBLE_EQ(h.expert_utilization, 1.0);
  EXPECT_DOUBLE_EQ(h.load_imbalance, 1.0);
  EXPECT_NEAR(h.routing_entropy, 1.0, 1e-15);
}

TEST(RouterHealth, HalfTheExpertsAndTheModelAggregate) {
  // Layer 0: two of four experts, 3:1 → imbalance 3 / (4/4) ... by hand: loads {30, 10, 0, 0}, mean 10.
  const RouterHealth h0 = layer_health({30, 10, 0, 0});
  EXPECT_DOUBLE_EQ(h0.expert_utilization, 0.5);
  EXPECT_DOUBLE_EQ(h0.load_imbalance, 3.0);
  const double p = 0.75, q = 0.25;
  EXPECT_NEAR(h0.routing_entropy, -(p * std::log(p) + q * std::log(q)) / std::log(4.0), 1e-15);
  // The model-level fields: utilization over all (layer, expert) cells, imbalance max, entropy mean.
  const RouterHealth m = router_health({{30, 10, 0, 0}, {10, 10, 10, 10}});
  EXPECT_DOUBLE_EQ(m.expert_utilization, 6.0 / 8);
  EXPECT_DOUBLE_EQ(m.load_imbalance, 3.0);
  EXPECT_NEAR(m.routing_entropy, (h0.routing_entropy + 1.0) / 2, 1e-15);
  // No load at all: nothing is used, no imbalance.
  const RouterHealth z = layer_health({0, 0});
  EXPECT_EQ(z.expert_utilization, 0.0);
  EXPECT_EQ(z.load_imbalance, 0.0);
}

TEST(RouterHealth, CapacityDropping) {
  // 4 tokens, top-1 of 2 experts, all to expert 0, capacity factor 1: C = ceil(1·4·1/2) = 2 → 2 of 4 pairs dropped.
  RoutingPlan plan(4, 2, 1);
  plan.topk_idx = std::vector<int>{0, 0, 0, 0};
  const std::vector<float> probs{0.9f, 0.1f, 0.8f, 0.2f, 0.7f, 0.3f, 0.6f, 0.4f};
  build_plan<float>(plan, probs.data(), 1.0, DropPolicy::Position);
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_EQ(plan.dropped, 2);
  EXPECT_EQ(plan.routed, (std::vector<i64>{4, 0}));  // expert_load counts before dropping
  EXPECT_EQ(plan.counts, (std::vector<i64>{2, 0}));
  // Dropless keeps all.
  build_plan<float>(plan, probs.data(), 0.0, DropPolicy::Position);
  EXPECT_EQ(plan.dropped, 0);
}

TEST(RouterHealth, ChurnComparesTopkSets) {
  // Token 0: same set in another slot order (not churn); token 1: {2,3} → {2,1} (churn); token 2 unchanged.
  const std::vector<int> prev{0, 1, 2, 3, 1, 0}, cur{1, 0, 2, 1, 1, 0};
  EXPECT_EQ(topk_changed_tokens(prev.data(), cur.data(), 3, 2), 1);
  EXPECT_DOUBLE_EQ(topk_churn(prev.data(), cur.data(), 3, 2), 1.0 / 3);
  EXPECT_DOUBLE_EQ(topk_churn(prev.data(), prev.data(), 3, 2), 0.0);
  RoutingChurn churn;
  EXPECT_FALSE(churn.primed());
  EXPECT_TRUE(churn.observe({prev, prev}, 2).empty());  // the first logged step has nothing to compare with
  EXPECT_TRUE(churn.primed());
  EXPECT_EQ(churn.observe({cur, prev}, 2), (std::vector<i64>{1, 0}));
  EXPECT_EQ(churn.observe({prev, cur}, 2), (std::vector<i64>{1, 1}));  // against the previous observation
}

TEST(RouterHealth, LogitNormInTheStatisticsBlock) {
  // logits [[3, 4], [0, 0]] (T = 2, E = 2): Σ_t ‖l_t‖² = 25, so the logit norm sqrt(25 / 2).
  RoutingPlan plan(2, 2, 1);
  plan.topk_idx = std::vector<int>{1, 0};
  const std::vector<float> logits{3, 4, 0, 0}, probs{0.2689414f, 0.7310586f, 0.5f, 0.5f};
  auto ops = make_cpu_moe_ops<float>();
  ops->build_plan(plan, probs.data(), 0.0, DropPolicy::Probs);
  ops->router_stats(plan, probs.data(), logits.data());
  const PlanStatsLayout L = plan.layout();
  std::vector<i64> host(size_t(L.words()));
  ops->copy_expert_counts_to_host(host.data(), plan);
  double sq = 0, lse = 0;
  std::memcpy(&sq, host.data() + L.logit_sq(), sizeof sq);
  std::memcpy(&lse, host.data() + L.lse_sq(), sizeof lse);
  EXPECT_DOUBLE_EQ(sq, 25.0);
  const double l0 = 4 + std::log1p(std::exp(-1.0)), l1 = std::log(2.0);
  EXPECT_NEAR(lse, l0 * l0 + l1 * l1, 1e-5);
}

TEST(RouterHealth, PerLayerAuxAndZ) {
  // One micro-batch, T = 4, E = 2, K = 1. Layer 0 all to expert 0 with mean probs (0.75, 0.25); layer 1 balanced.
  ModelConfig m;
  m.num_experts = 2;
  m.top_k = 1;
  MicroStats s;
  s.tokens = 4;
  s.router.resize(2);
  s.router[0].routed = {4, 0};
  s.router[0].prob_sum = {3.0, 1.0};
  s.router[0].lse_sq_sum = 8.0;
  s.router[1].routed = {2, 2};
  s.router[1].prob_sum = {2.0, 2.0};
  s.router[1].lse_sq_sum = 2.0;
  // layer form: (E/K) Σ_e f_e P_e = 2 · (1 · 0.75) = 1.5 and 2 · (0.5·0.5 + 0.5·0.5) = 1.
  EXPECT_DOUBLE_EQ(aux_loss_layer_value(s, m, AuxForm::Layer, nullptr, 0), 1.5);
  EXPECT_DOUBLE_EQ(aux_loss_layer_value(s, m, AuxForm::Layer, nullptr, 1), 1.0);
  // The run's aux (layer form) is the mean of the per-layer values; z likewise.
  EXPECT_DOUBLE_EQ(aux_loss_value(s, m, AuxForm::Layer, nullptr), 1.25);
  EXPECT_DOUBLE_EQ(z_loss_layer_value(s, 0), 2.0);
  EXPECT_DOUBLE_EQ(z_loss_layer_value(s, 1), 0.5);
  EXPECT_DOUBLE_EQ(z_loss_value(s), 1.25);
  // hf form on one layer: E · Σ_e (c_e/T)(P_e/T) — with K = 1 the same numbers as the layer form.
  EXPECT_DOUBLE_EQ(aux_loss_layer_value(s, m, AuxForm::Hf, nullptr, 0), 1.5);
  m.top_k = 2;  // (E/K) halves the layer form; the hf form keeps E
  EXPECT_DOUBLE_EQ(aux_loss_layer_value(s, m, AuxForm::Layer, nullptr, 0), 0.75);
  EXPECT_DOUBLE_EQ(aux_loss_layer_value(s, m, AuxForm::Hf, nullptr, 0), 1.5);
}

TEST(ModelFlops, PalmCountByHand) {
  // Mixtral-like: H 64, 4 heads of 16, 2 kv heads, I 128, E 4, K 2, V 256, 2 layers, seq 32.
  ModelConfig m;
  m.hidden_size = 64, m.num_heads = 4, m.num_kv_heads = 2, m.intermediate_size = 128;
  m.num_experts = 4, m.top_k = 2, m.vocab_size = 256, m.num_layers = 2;
  const double attn = 64.0 * 64 * 2 + 64.0 * 32 * 2;      // q, o [64x64]; k, v [32x64]
  const double moe = 64.0 * 4 + 2 * 3 * 64.0 * 128;        // router + 2 active experts
  const double n = 2 * (attn + moe) + 64.0 * 256;          // + lm_head
  const ModelFlops f = model_flops(m, LoraSpec{}, 32);
  EXPECT_DOUBLE_EQ(f.active_params, n);
  EXPECT_DOUBLE_EQ(f.per_token, 6 * n + 12.0 * 2 * 4 * 16 * 32);
  // LoRA r 8 on q and v only: 4N + 6·N_lora + attention.
  LoraSpec lora;
  lora.method = PeftMethod::Lora;
  lora.r = 8;
  lora.mask = uint8_t(1u << int(LoraProj::Q) | 1u << int(LoraProj::V));
  const double n_lora = 2 * (8.0 * (64 + 64) + 8.0 * (64 + 32));
  const ModelFlops fl = model_flops(m, lora, 32);
  EXPECT_DOUBLE_EQ(fl.lora_params, n_lora);
  EXPECT_DOUBLE_EQ(fl.per_token, 4 * n + 6 * n_lora + 12.0 * 2 * 4 * 16 * 32);
  EXPECT_DOUBLE_EQ(known_gpu_peak_tflops("NVIDIA H200", Precision::Bf16), 989.4);
  EXPECT_DOUBLE_EQ(known_gpu_peak_tflops("NVIDIA A100-SXM4-80GB", Precision::Bf16), 312);
  EXPECT_EQ(known_gpu_peak_tflops("Some Future GPU", Precision::Bf16), 0.0);
}

TEST(PhaseTimer, HostTimerTimesEnteredPhasesOnly) {
  auto t = make_phase_timer(MemSpace::Host, nullptr);
  int barriers = 0;
  t->before_a2a = [&] { ++barriers; };
  {
    PhaseScope s(t.get(), MoePhase::Experts);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  { PhaseScope s(t.get(), MoePhase::DispatchA2A); }
  const auto ms = t->read_ms();
  EXPECT_GE(ms[size_t(MoePhase::Experts)], 19.0);
  EXPECT_LT(ms[size_t(MoePhase::Experts)], 2000.0);
  EXPECT_EQ(ms[size_t(MoePhase::Route)], 0.0);
  EXPECT_EQ(barriers, 1);  // only the all-to-all phase aligned the ranks
  EXPECT_EQ(t->read_ms()[size_t(MoePhase::Experts)], 0.0);  // a read clears
  EXPECT_STREQ(phase_name(MoePhase::DispatchA2ABwd), "dispatch_a2a_bwd");
  EXPECT_EQ(kMoeForwardPhases, 7);
}
