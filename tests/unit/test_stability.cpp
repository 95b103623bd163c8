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

TEST(Stability, RouterHealthWarnsOnCollapseNotOnHealth) {
  LoraSpec frozen;
  frozen.method = PeftMethod::Lora;
  RouterHealthWatch watch(frozen, 3);
  const RouterHealth healthy{0.9, 1.6, 0.95}, collapsed{0.25, 7.5, 0.3};
  for (int s = 1; s <= 5; ++s) EXPECT_TRUE(watch.observe(s, healthy).empty());
  auto w = watch.observe(6, collapsed);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("router health degraded"), std::string::npos);
  EXPECT_NE(w[0].find("peft.train_router: true"), std::string::npos);
  EXPECT_NE(w[0].find("aux_loss_coef"), std::string::npos);
  EXPECT_TRUE(watch.observe(7, collapsed).empty());  // not repeated at every logged step
  EXPECT_TRUE(watch.observe(8, collapsed).empty());
  EXPECT_EQ(watch.observe(9, collapsed).size(), 1u);  // again after 3 logged steps
  w = watch.observe(10, healthy);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("recovered"), std::string::npos);
  EXPECT_TRUE(watch.observe(11, healthy).empty());
  // Imbalance alone (utilization fine) is degraded too.
  EXPECT_EQ(watch.observe(12, RouterHealth{1.0, 4.5, 0.9}).size(), 1u);
}
