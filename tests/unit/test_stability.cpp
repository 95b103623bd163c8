// Owns the tests of the stability advice: recipe warnings at start-up and router-health warnings over a run.
#include <gtest/gtest.h>

#include "train/stability.h"

using namespace moe;

namespace {
Config recipe(PeftMethod method, std::vector<std::string> targets, double lr, int micro, int seq, int accum) {
  Config c;
  c.model.arch = Arch::Mixtral;
  c.model.num_experts = 8;
  c.model.num_layers = 2;
  c.peft.method = method;
  c.peft.targets = std::move(targets);
  c.train.lr = lr;
  c.train.micro_batch = micro;
  c.train.seq_len = seq;
  c.train.grad_accum = accum;
  return c;
}
bool any_has(const std::vector<std::string>& v, const std::string& part) {
  for (const std::string& s : v)
    if (s.find(part) != std::string::npos) return true;
  return false;
}
}  // namespace

TEST(Stability, RecipeAdvice) {
  // A healthy LoRA recipe: experts targeted, lr 1e-4, 4 x 4096 x 4 = 64k tokens per step on one rank.
  Config ok = recipe(PeftMethod::Lora, {"q_proj", "w1", "w2", "w3"}, 1e-4, 4, 4096, 4);
  EXPECT_TRUE(recipe_advice(ok, resolve_lora_spec(ok.peft, ok.model), 1).empty());
  // Attention only: no expert adapted.
  Config attn = recipe(PeftMethod::Lora, {"q_proj", "v_proj"}, 1e-4, 4, 4096, 4);
  EXPECT_TRUE(any_has(recipe_advice(attn, resolve_lora_spec(attn.peft, attn.model), 1), "adapt no expert"));
  // lr too high for LoRA on an MoE; full fine-tuning is not judged by the LoRA range.
  Config hot = recipe(PeftMethod::Qlora, {"w1", "w2", "w3"}, 3e-3, 4, 4096, 4);
  EXPECT_TRUE(any_has(recipe_advice(hot, resolve_lora_spec(hot.peft, hot.model), 1), "outside the usual LoRA"));
  Config full = recipe(PeftMethod::Full, {}, 3e-3, 4, 4096, 4);
  EXPECT_TRUE(recipe_advice(full, LoraSpec{}, 1).empty());
  // 1 x 512 x 1 x 2 ranks = 1024 tokens: advise grad_accum 64 (64 x 1024 = 65536).
  Config small = recipe(PeftMethod::Lora, {"w1", "w2", "w3"}, 1e-4, 1, 512, 1);
  const auto w = recipe_advice(small, resolve_lora_spec(small.peft, small.model), 2);
  EXPECT_TRUE(any_has(w, "1024 tokens per optimizer step")) << (w.empty() ? "" : w[0]);
  EXPECT_TRUE(any_has(w, "train.grad_accum: 64"));
}

// One layer's health at a logged step (aux/z at the values of balanced routing with E = 8, K = 2).
static LayerRouterHealth layer_at(int layer, double util, double imb, double aux = 1.0, double z = 4.4) {
  LayerRouterHealth h;
  h.layer = layer;
  h.utilization = util;
  h.imbalance = imb;
  h.aux = aux;
  h.z = z;
  return h;
}

TEST(Stability, RouterHealthWarnsOnCollapseNotOnHealth) {
  LoraSpec frozen;
  frozen.method = PeftMethod::Lora;
  MoeConfig moe;  // aux_loss_coef 0.01, z_loss_coef 0
  RouterHealthWatch watch(frozen, moe, 8, 2, 3);
  const std::vector<LayerRouterHealth> healthy{layer_at(0, 0.9, 1.6), layer_at(1, 1.0, 1.2)};
  const std::vector<LayerRouterHealth> collapsed{layer_at(0, 0.9, 1.6), layer_at(1, 0.25, 7.5)};
  for (int s = 1; s <= 5; ++s) EXPECT_TRUE(watch.observe(s, healthy).empty());
  auto w = watch.observe(6, collapsed);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("router health degraded (collapse)"), std::string::npos) << w[0];
  EXPECT_NE(w[0].find("in 1 of 2 MoE layers: layer 1 expert_utilization 0.25"), std::string::npos) << w[0];
  EXPECT_EQ(w[0].find("layer 0"), std::string::npos) << "a healthy layer is not named: " << w[0];
  EXPECT_NE(w[0].find("peft.train_router: true"), std::string::npos);
  EXPECT_NE(w[0].find("aux_loss_coef"), std::string::npos);
  EXPECT_NE(w[0].find("moe.router_jitter"), std::string::npos);
  EXPECT_NE(w[0].find("lower train.lr"), std::string::npos);
  EXPECT_TRUE(watch.observe(7, collapsed).empty());  // not repeated at every logged step
  EXPECT_TRUE(watch.observe(8, collapsed).empty());
  EXPECT_EQ(watch.observe(9, collapsed).size(), 1u);  // again after 3 logged steps
  w = watch.observe(10, healthy);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("recovered"), std::string::npos);
  EXPECT_TRUE(watch.observe(11, healthy).empty());
  // Outside the healthy range but not collapsed (imbalance 3 > 2.5): degraded, without "(collapse)".
  w = watch.observe(12, {layer_at(3, 1.0, 3.0)});
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("router health degraded in 1 of 1 MoE layers: layer 3"), std::string::npos) << w[0];
}

TEST(Stability, AuxAndZOutsideTheirRangesNameTheLayer) {
  MoeConfig moe;
  moe.aux_loss_coef = 0.01;
  moe.z_loss_coef = 0.001;
  RouterHealthWatch watch(LoraSpec{}, moe, 8, 2, 10);
  // Healthy: weighted aux 0.01 x 1.0, weighted z 0.001 x 4.4 (lse of equal logits over 8 experts is ln 8).
  EXPECT_TRUE(watch.observe(1, {layer_at(0, 1.0, 1.1), layer_at(1, 1.0, 1.1)}).empty());
  // Layer 1: aux 20 (x 0.01 = 0.2 > 0.1) and z 30 (x 0.001 = 0.03 >= 0.01, far past 1.5 (ln 8)^2 = 6.5).
  const auto w = watch.observe(2, {layer_at(0, 1.0, 1.1), layer_at(1, 1.0, 1.1, 20.0, 30.0)});
  ASSERT_EQ(w.size(), 2u);
  EXPECT_NE(w[0].find("aux loss x moe.aux_loss_coef above the healthy 0.01-0.1 in layer 1 (0.2; aux 20, 1 at perfect "
                      "balance)"), std::string::npos)
      << w[0];
  EXPECT_NE(w[1].find("z-loss x moe.z_loss_coef above the healthy 0.01 in layer 1 (0.03"), std::string::npos) << w[1];
  EXPECT_NE(w[1].find("raise moe.z_loss_coef"), std::string::npos);
  // A large z coefficient alone does not warn while the logits sit at the equal-logit floor.
  MoeConfig strong = moe;
  strong.z_loss_coef = 0.01;
  RouterHealthWatch w2(LoraSpec{}, strong, 8, 2, 10);
  EXPECT_TRUE(w2.observe(1, {layer_at(0, 1.0, 1.1, 1.0, 4.4)}).empty());
  // A large aux coefficient alone does not warn: at perfect balance the hf form is top_k (here 2), the layer form 1.
  MoeConfig hf = moe;
  hf.aux_loss_form = AuxForm::Hf;
  hf.aux_loss_coef = 0.06;  // 0.06 x 2.0 = 0.12 > 0.1, but aux is at its balanced value
  RouterHealthWatch w3(LoraSpec{}, hf, 8, 2, 10);
  EXPECT_TRUE(w3.observe(1, {layer_at(0, 1.0, 1.1, 2.0, 4.4)}).empty());
  EXPECT_EQ(w3.observe(2, {layer_at(0, 1.0, 1.1, 3.0, 4.4)}).size(), 1u);  // 1.5x balanced: unbalanced and strong
}

TEST(Stability, CollapseMessageOnlyForCollapsedLayers) {
  MoeConfig moe;
  EXPECT_EQ(collapse_message(5, {layer_at(0, 0.6, 3.0)}, moe, LoraSpec{}), "");  // degraded, not collapsed
  const std::string m = collapse_message(5, {layer_at(0, 1.0, 1.0), layer_at(2, 0.25, 4.0)}, moe, LoraSpec{});
  EXPECT_NE(m.find("router collapse at step 5 (train.stop_on_collapse): layer 2 expert_utilization 0.25"),
            std::string::npos) << m;
  EXPECT_NE(m.find("checkpoints already written are kept"), std::string::npos);
  EXPECT_EQ(router_verdict(layer_at(0, 0.5, 4.0)), RouterVerdict::Degraded);  // the bounds themselves: not collapse
  EXPECT_EQ(router_verdict(layer_at(0, 0.49, 1.0)), RouterVerdict::Collapse);
  EXPECT_EQ(router_verdict(layer_at(0, 1.0, 4.01)), RouterVerdict::Collapse);
  EXPECT_EQ(router_verdict(layer_at(0, 0.7, 2.5)), RouterVerdict::Healthy);
}
