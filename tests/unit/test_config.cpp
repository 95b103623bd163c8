// Owns the Config.* unit tests: YAML keys, --set overrides, validation messages, round trip (DESIGN §6).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.h"
#include "core/error.h"
#include "test_util.h"

namespace moe {
namespace {

using test::bad_input;

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return bad_input([&] { parse_config(yaml, overrides, "configs/x.yaml"); });
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg)

TEST(Config, DefaultsParse) {
  const Config defaults;
  for (const std::string text : {"", "# only a comment\n", "upcycle:\n"}) {
    Config c = parse_config(text, {}, "mem.yaml");
    EXPECT_EQ(config_to_yaml(c), config_to_yaml(defaults)) << text;
    EXPECT_EQ(c.source_path, "mem.yaml");
    EXPECT_EQ(c.model.arch, Arch::Mixtral);
    EXPECT_EQ(c.model.vocab_size, 256);
    EXPECT_EQ(c.train.steps, 10);
    EXPECT_EQ(c.train.seed, 1234ull);
    EXPECT_EQ(c.peft.quant, "nf4");
    EXPECT_EQ(c.resolved_run_dir(), "runs/run");
  }
}

TEST(Config, NestedKeysSet) {
  const Config c = parse_config(R"(
run: {name: exp1, dir: /tmp/exp1}
model:
  init_from: hf/Qwen3
  arch: qwen3_moe
  num_layers: 3
  head_dim: 16
  moe_intermediate_size: 32
  norm_topk_prob: false
  rms_norm_eps: 1e-6
moe:
  capacity_factor: 1.25
  drop_policy: position
  aux_loss_scope: global
  aux_loss_form: hf
parallel: {ep: 2, zero: 3, backend: nccl}
train:
  device: cuda
  precision: bf16
  lr: 3e-4
  schedule: constant
  seed: 0
peft:
  method: qlora
  targets: [q_proj, v_proj]
  double_quant: true
data:
  format: jsonl
  dtype: uint16
  mix:
    - {path: a.bin, weight: 0.25}
    - {path: b.bin, weight: 3}
checkpoint: {dir: ck, every: 50, keep: 1, on_signal: false}
log: {every: 5, plots: true}
)",
                                {}, "mem.yaml");
  EXPECT_EQ(c.run.name, "exp1");
  EXPECT_EQ(c.resolved_run_dir(), "/tmp/exp1");
  EXPECT_EQ(c.model_init_from, "hf/Qwen3");
  EXPECT_EQ(c.model.arch, Arch::Qwen3Moe);
  EXPECT_EQ(c.model.num_layers, 3);
  EXPECT_EQ(c.model.resolved_head_dim(), 16);
  EXPECT_EQ(c.model.expert_width(), 32);
  EXPECT_FALSE(c.model.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.model.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.moe.capacity_factor, 1.25);
  EXPECT_EQ(c.moe.drop_policy, DropPolicy::Position);
  EXPECT_EQ(c.moe.aux_loss_scope, AuxScope::Global);
  EXPECT_EQ(c.moe.aux_loss_form, AuxForm::Hf);
  EXPECT_EQ(c.parallel.ep, 2);
  EXPECT_EQ(c.parallel.zero, 3);
  EXPECT_EQ(c.parallel.backend, CommBackend::Nccl);
  EXPECT_EQ(c.train.device, Device::Cuda);
  EXPECT_EQ(c.train.precision, Precision::Bf16);
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
  EXPECT_EQ(c.train.schedule, Schedule::Constant);
  EXPECT_EQ(c.train.seed, 0ull);
  EXPECT_EQ(c.peft.method, PeftMethod::Qlora);
  EXPECT_EQ(c.peft.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_TRUE(c.peft.double_quant);
  EXPECT_EQ(c.data.format, DataFormat::Jsonl);
  EXPECT_EQ(c.data.dtype, TokenDtype::U16);
  ASSERT_EQ(c.data.mix.size(), 2u);
  EXPECT_EQ(c.data.mix[0].first, "a.bin");
  EXPECT_DOUBLE_EQ(c.data.mix[0].second, 0.25);
  EXPECT_EQ(c.data.mix[1].first, "b.bin");
  EXPECT_DOUBLE_EQ(c.data.mix[1].second, 3.0);
  EXPECT_EQ(c.checkpoint.dir, "ck");
  EXPECT_EQ(c.checkpoint.every, 50);
  EXPECT_EQ(c.checkpoint.keep, 1);
  EXPECT_FALSE(c.checkpoint.on_signal);
  EXPECT_EQ(c.log.every, 5);
  EXPECT_TRUE(c.log.plots);
}

TEST(Config, OverrideApplied) {
  const Config c = parse_config("train: {steps: 10, lr: 1e-3}\nmodel: {num_experts: 4, top_k: 2}\n",
                                {"train.steps=20", "train.steps = 30", "model.top_k=6", "model.num_experts=8",
                                 "peft.targets=[q_proj,v_proj]", "data.mix=[{path: a, weight: 2}]",
                                 "run.dir=", "train.seed=18446744073709551615"},
                                "mem.yaml");
  EXPECT_EQ(c.train.steps, 30);  // later --set wins
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  // top_k 6 > num_experts 4 is fine because the cross check runs after all overrides.
  EXPECT_EQ(c.model.top_k, 6);
  EXPECT_EQ(c.model.num_experts, 8);
  EXPECT_EQ(c.peft.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  ASSERT_EQ(c.data.mix.size(), 1u);
  EXPECT_EQ(c.data.mix[0].first, "a");
  EXPECT_EQ(c.run.dir, "");
  EXPECT_EQ(c.train.seed, 18446744073709551615ull);
}

TEST(Config, UnknownKeyNamesTheKey) {
  std::string m = parse_error("train:\n  lrr: 0.1\n");
  EXPECT_HAS(m, "configs/x.yaml: unknown key 'train.lrr' (did you mean 'train.lr'?)");
  EXPECT_HAS(m, "line 2");

  m = parse_error("modle:\n  num_layers: 2\n");
  EXPECT_HAS(m, "configs/x.yaml: unknown section 'modle' (did you mean 'model'?)");

  m = parse_error("train:\n  capacity_factor: 1.0\n");
  EXPECT_HAS(m, "unknown key 'train.capacity_factor' (did you mean 'moe.capacity_factor'?)");

  m = parse_error("train:\n  zzzzzzzz: 1\n");
  EXPECT_HAS(m, "unknown key 'train.zzzzzzzz'");
  EXPECT_EQ(m.find("did you mean"), std::string::npos) << m;

  m = parse_error("- a\n- b\n");
  EXPECT_HAS(m, "expects a map of sections");

  m = parse_error("train:\n  steps: 1\n  steps: 2\n");
  EXPECT_HAS(m, "key 'train.steps' appears twice");
}

TEST(Config, WrongType) {
  std::string m = parse_error("train:\n  steps: ten\n");
  EXPECT_HAS(m, "configs/x.yaml: key 'train.steps' expects a positive integer, got 'ten'");

  m = parse_error("train:\n  steps: 2.5\n");
  EXPECT_HAS(m, "key 'train.steps' expects a positive integer, got '2.5'");

  m = parse_error("train:\n  lr: fast\n");
  EXPECT_HAS(m, "key 'train.lr' expects a number > 0, got 'fast'");

  m = parse_error("model:\n  hidden_size: {a: 1}\n");
  EXPECT_HAS(m, "key 'model.hidden_size' expects a positive integer, got a map");

  m = parse_error("run:\n  name: [a, b]\n");
  EXPECT_HAS(m, "key 'run.name' expects a string, got a list");

  m = parse_error("log:\n  plots: yes\n");
  EXPECT_HAS(m, "key 'log.plots' expects true or false, got 'yes'");

  m = parse_error("peft:\n  targets: q_proj\n");
  EXPECT_HAS(m, "key 'peft.targets' expects a list of strings");

  m = parse_error("data:\n  mix: [{path: a}]\n");
  EXPECT_HAS(m, "key 'data.mix' expects a list of {path: string, weight: number > 0} maps");

  m = parse_error("train:\n  seed: -1\n");
  EXPECT_HAS(m, "key 'train.seed' expects a non-negative integer, got '-1'");

  m = parse_error("model: 3\n");
  EXPECT_HAS(m, "section 'model' expects a map of keys, got '3'");

  m = parse_error("train: {steps: [1\n");
  EXPECT_HAS(m, "configs/x.yaml: not valid YAML");
}

TEST(Config, OutOfRange) {
  EXPECT_HAS(parse_error("train: {steps: 0}"), "key 'train.steps' expects a positive integer, got '0'");
  EXPECT_HAS(parse_error("train: {steps: 99999999999}"), "key 'train.steps' expects a positive integer");
  EXPECT_HAS(parse_error("train: {beta1: 1.0}"), "key 'train.beta1' expects a number in [0, 1), got '1.0'");
  EXPECT_HAS(parse_error("train: {lr: 0}"), "key 'train.lr' expects a number > 0, got '0'");
  EXPECT_HAS(parse_error("train: {min_lr: -1e-5}"), "key 'train.min_lr' expects a number >= 0");
  EXPECT_HAS(parse_error("parallel: {zero: 4}"), "key 'parallel.zero' expects an integer in 0..3, got '4'");
  EXPECT_HAS(parse_error("parallel: {ep: 0}"), "key 'parallel.ep' expects a positive integer, got '0'");
  EXPECT_HAS(parse_error("upcycle: {depth_pct: 101}"), "key 'upcycle.depth_pct' expects a number in [0, 100]");
  EXPECT_HAS(parse_error("moe: {router_jitter: 1}"), "key 'moe.router_jitter' expects a number in [0, 1)");
  EXPECT_HAS(parse_error("checkpoint: {keep: 0}"), "key 'checkpoint.keep' expects a positive integer");
  EXPECT_HAS(parse_error("log: {every: 0}"), "key 'log.every' expects a positive integer");
  EXPECT_HAS(parse_error("data: {mix: [{path: a, weight: 0}]}"), "key 'data.mix' expects");

  // Cross-key checks (after overrides).
  EXPECT_HAS(parse_error("model: {num_experts: 4, top_k: 5}"),
             "key 'model.top_k' must be <= model.num_experts (4), got 5");
  EXPECT_HAS(parse_error("model: {num_experts: 4}", {"model.top_k=8"}), "key 'model.top_k' must be <=");
  EXPECT_HAS(parse_error("model: {num_heads: 6, num_kv_heads: 4}"),
             "key 'model.num_heads' (6) must be divisible by model.num_kv_heads, got 4");
  EXPECT_HAS(parse_error("model: {hidden_size: 66, num_heads: 4}"),
             "key 'model.hidden_size' (66) must be divisible by model.num_heads (4)");
  EXPECT_NO_THROW(parse_config("model: {hidden_size: 66, num_heads: 4, head_dim: 16}", {}, "m"));
  EXPECT_HAS(parse_error("train: {lr: 1e-4, min_lr: 1e-3}"), "key 'train.min_lr' must be <= train.lr");
}

TEST(Config, EnumBadValue) {
  EXPECT_HAS(parse_error("moe: {drop_policy: random}"),
             "configs/x.yaml: key 'moe.drop_policy' must be one of probs|position, got 'random'");
  EXPECT_HAS(parse_error("model: {arch: llama}"), "key 'model.arch' must be one of mixtral|qwen3_moe, got 'llama'");
  EXPECT_HAS(parse_error("train: {device: CUDA}"), "key 'train.device' must be one of cpu|cuda, got 'CUDA'");
  EXPECT_HAS(parse_error("peft: {quant: nf8}"), "key 'peft.quant' must be one of nf4, got 'nf8'");
  EXPECT_HAS(parse_error("data: {dtype: int32}"), "key 'data.dtype' must be one of uint32|uint16");
  EXPECT_HAS(parse_error("", {"parallel.backend=gloo"}),
             "--set 'parallel.backend=gloo': key 'parallel.backend' must be one of auto|mpi|nccl, got 'gloo'");
}

TEST(Config, BadSetSyntax) {
  EXPECT_HAS(parse_error("", {"train.steps"}), "--set 'train.steps': expected key=value");
  EXPECT_HAS(parse_error("", {"=5"}), "--set '=5': expected key=value");
  EXPECT_HAS(parse_error("", {"train.lrr=3"}), "--set 'train.lrr=3': unknown key 'train.lrr' (did you mean 'train.lr'?)");
  EXPECT_HAS(parse_error("", {"train=3"}), "--set 'train=3': unknown key 'train'");
  EXPECT_HAS(parse_error("", {"train.steps=ten"}), "--set 'train.steps=ten': key 'train.steps' expects a positive");
  EXPECT_HAS(parse_error("", {"peft.targets=[a, b"}), "--set 'peft.targets=[a, b': the value is not valid YAML");
}

TEST(Config, RoundTrip) {
  Config c = parse_config(R"(
run: {name: "true", dir: "a dir: with # odd chars"}
model: {init_from: "~", arch: qwen3_moe, rope_theta: 1000000, rms_norm_eps: 1e-6, init_std: 0.1,
        head_dim: 128, tie_word_embeddings: true}
upcycle: {from: dense/, num_experts: 16, top_k: 4, noise: 0.3333333333333333, depth_pct: 12.5}
moe: {capacity_factor: 1.1, aux_loss_coef: 0.001, z_loss_coef: 1e-3, router_jitter: 0.01,
      router_temperature: 0.7, bias_update_rate: 1e-3, drop_policy: position}
train: {lr: 3e-4, min_lr: 3e-5, beta2: 0.999, eps: 1e-12, seed: 18446744073709551615, steps: 7}
peft: {method: lora, r: 16, alpha: 32, dropout: 0.05, targets: [q_proj, "null", ""], train_router: false}
data: {format: text, path: "", tokenizer: tok, chat_template: "{{ x }}",
       mix: [{path: "a b", weight: 0.1}, {path: c, weight: 2}], shuffle: true, reset_attention: true}
checkpoint: {every: 3, keep: 9}
)",
                          {}, "mem.yaml");
  const std::string text = config_to_yaml(c);
  const Config back = parse_config(text, {}, "mem.yaml");
  EXPECT_EQ(config_to_yaml(back), text);
  EXPECT_EQ(back.run.name, "true");
  EXPECT_EQ(back.run.dir, "a dir: with # odd chars");
  EXPECT_EQ(back.model_init_from, "~");
  EXPECT_EQ(back.model.head_dim, 128);
  EXPECT_EQ(back.model.rms_norm_eps, c.model.rms_norm_eps);  // bit-equal, not just close
  EXPECT_EQ(back.upcycle.noise, c.upcycle.noise);
  EXPECT_EQ(back.moe.capacity_factor, c.moe.capacity_factor);
  EXPECT_EQ(back.train.eps, c.train.eps);
  EXPECT_EQ(back.train.seed, 18446744073709551615ull);
  EXPECT_EQ(back.peft.targets, (std::vector<std::string>{"q_proj", "null", ""}));
  EXPECT_EQ(back.data.chat_template, "{{ x }}");
  EXPECT_EQ(back.data.mix, c.data.mix);
  // Every schema key is printed: a few spot checks of keys left at their defaults.
  for (const char* key : {"aux_loss_scope:", "backend:", "warmup_steps:", "double_quant:", "on_signal:",
                          "plots:", "moe_intermediate_size:"})
    EXPECT_HAS(text, key);
  // And the defaults survive too.
  const Config d;
  EXPECT_EQ(config_to_yaml(parse_config(config_to_yaml(d), {}, "m")), config_to_yaml(d));
}

TEST(Config, MissingFile) {
  std::string m = bad_input([] { load_config("/nonexistent/dir/cfg.yaml", {}); });
  EXPECT_HAS(m, "'/nonexistent/dir/cfg.yaml'");
  m = bad_input([] { load_config("/", {}); });
  EXPECT_HAS(m, "'/' is a directory");
}

TEST(Config, ShippedConfigsParse) {
  const std::string dir = std::string(MOE_SOURCE_DIR) + "/configs/";
  const Config tiny = load_config(dir + "tiny.yaml", {});
  EXPECT_EQ(tiny.source_path, dir + "tiny.yaml");
  EXPECT_EQ(tiny.run.name, "tiny");
  EXPECT_EQ(tiny.model.arch, Arch::Mixtral);
  EXPECT_EQ(tiny.model.vocab_size, 256);
  EXPECT_EQ(tiny.model.num_experts, 4);
  EXPECT_EQ(tiny.train.steps, 150);
  EXPECT_DOUBLE_EQ(tiny.train.lr, 3e-3);
  EXPECT_EQ(tiny.data.format, DataFormat::Text);
  EXPECT_EQ(tiny.data.path, "runs/demo/corpus.txt");
  EXPECT_EQ(tiny.log.every, 10);

  const Config mix = load_config(dir + "mixtral.yaml", {});
  EXPECT_EQ(mix.model.hidden_size, 4096);
  EXPECT_EQ(mix.model.intermediate_size, 14336);
  EXPECT_EQ(mix.model.num_layers, 32);
  EXPECT_EQ(mix.model.num_kv_heads, 8);
  EXPECT_EQ(mix.model.num_experts, 8);
  EXPECT_EQ(mix.parallel.ep, 8);
  EXPECT_EQ(mix.parallel.zero, 3);
  EXPECT_EQ(mix.train.precision, Precision::Bf16);
  EXPECT_DOUBLE_EQ(mix.moe.capacity_factor, 0.0);

  const Config qwen = load_config(dir + "qwen3_moe.yaml", {"train.steps=5"});
  EXPECT_EQ(qwen.model.arch, Arch::Qwen3Moe);
  EXPECT_EQ(qwen.model.vocab_size, 151936);
  EXPECT_EQ(qwen.model.num_experts, 128);
  EXPECT_EQ(qwen.model.top_k, 8);
  EXPECT_EQ(qwen.model.resolved_head_dim(), 128);
  EXPECT_EQ(qwen.model.expert_width(), 768);
  EXPECT_EQ(qwen.train.steps, 5);
}

// Issue 8 (trust under faults): model shapes every file must pass, and messages that quote, not copy.
TEST(Config, ModelShapeLimitsAndShortMessages) {
  EXPECT_HAS(parse_error("model: {head_dim: 3}"), "key 'model.head_dim' must be even");
  EXPECT_HAS(parse_error("model: {hidden_size: 6, num_heads: 2, num_kv_heads: 1}"), "key 'model.head_dim' must be even");
  EXPECT_HAS(parse_error("model: {num_layers: 100000}"), "key 'model.num_layers' must be in 1..65536");
  EXPECT_HAS(parse_error("model: {num_layers: 4096, num_experts: 4096}"), "exceed the limit of 2^20");
  EXPECT_HAS(parse_error("model: {hidden_size: 2000000000, vocab_size: 2000000000, num_heads: 2, num_kv_heads: 2}"),
             "more than the limit of 2^48");
  EXPECT_HAS(parse_error("model: {num_layers: 2, mlp_only_layers: [2]}"), "key 'model.mlp_only_layers' holds layer 2");
  const std::string huge = parse_error("train:\n  steps: " + std::string(200000, '9') + "\n");
  EXPECT_HAS(huge, "key 'train.steps' expects a positive integer");
  EXPECT_LT(huge.size(), 400u) << huge.substr(0, 400);
  const std::string key = parse_error("", {"train." + std::string(100000, 'x') + "=1"});
  EXPECT_HAS(key, "unknown key 'train.xxx");
  EXPECT_LT(key.size(), 400u) << key.substr(0, 400);
  const std::string set = parse_error("", {"train.lr=" + std::string(100000, '1') + "x"});
  EXPECT_HAS(set, "key 'train.lr'");
  EXPECT_LT(set.size(), 600u) << set.substr(0, 600);
}

}  // namespace
}  // namespace moe

namespace moe {
// Keys that would be parsed and then ignored are refused: Qwen3-only layer keys on Mixtral, a second YAML
// document; names with control characters (a NUL would cut the path short) too.
TEST(Config, IgnoredOrUnsafeValuesAreRefused) {
  auto err = [](const std::string& yaml, std::vector<std::string> sets = {}) {
    return test::bad_input([&] { parse_config(yaml, sets, "configs/x.yaml"); });
  };
  EXPECT_NE(err("model: {arch: mixtral, mlp_only_layers: [0]}\n").find("apply to model.arch: qwen3_moe"), std::string::npos);
  EXPECT_NE(err("model: {arch: mixtral}\n", {"model.decoder_sparse_step=2"}).find("qwen3_moe"), std::string::npos);
  EXPECT_NE(err("model: {arch: mixtral, moe_intermediate_size: 16, intermediate_size: 32}\n").find("qwen3_moe"),
            std::string::npos);
  EXPECT_NO_THROW(parse_config("model: {arch: qwen3_moe, mlp_only_layers: [0], moe_intermediate_size: 16}\n", {}, "x"));
  EXPECT_NE(err("train: {lr: 0.1}\n---\ntrain: {lr: 0.2}\n").find("2 or more YAML documents"), std::string::npos);
  EXPECT_NE(err(std::string("run: {name: \"a\\0b\"}\n")).find("control character"), std::string::npos);
}
}  // namespace moe
