// Tests that fine-tuning from an HF model keeps its load-balancing coefficient unless the run's config sets one.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "config/config.h"
#include "train/trainer.h"

namespace moe {
namespace {

// A config.json of a tiny Mixtral with router_aux_loss_coef 0.02 (transformers' Mixtral default), no weights:
// resolve_model_config reads only config.json.
std::string write_model_dir() {
  const std::string dir = std::filesystem::temp_directory_path() / ("moe_aux_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
    "router_aux_loss_coef": 0.02})";
  return dir;
}

Config resolved(const std::string& dir, std::vector<std::string> sets) {
  sets.push_back("model.init_from=" + dir);
  return resolve_model_config(parse_config("run: {name: aux}\n", sets, "test"));
}

TEST(AuxFromModel, DefaultsToConfigJsonCoefficient) {
  const std::string dir = write_model_dir();
  // Form layer (the default): HF's pooled aux over k picks equals top_k x ours for one layer -> 0.02 * 2.
  EXPECT_DOUBLE_EQ(resolved(dir, {}).moe.aux_loss_coef, 0.04);
  EXPECT_DOUBLE_EQ(resolved(dir, {"moe.aux_loss_form=hf"}).moe.aux_loss_coef, 0.02);
  // A coefficient the run gives wins, even one equal to the built-in default.
  EXPECT_DOUBLE_EQ(resolved(dir, {"moe.aux_loss_coef=0.5"}).moe.aux_loss_coef, 0.5);
  EXPECT_DOUBLE_EQ(resolved(dir, {"moe.aux_loss_coef=0.01"}).moe.aux_loss_coef, 0.01);
  // Without model.init_from the built-in default stays.
  EXPECT_DOUBLE_EQ(parse_config("run: {name: aux}\n", {}, "test").moe.aux_loss_coef, 0.01);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
