// Tests that config.json is read as transformers 5.x reads it (class defaults, sliding window, refused math keys),
// that loaded weights are finite (init_from and upcycle.from), tied lm_head handling, and export metadata.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/hf_model.h"
#include "io/safetensors.h"
#include "io/upcycle.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace moe;
using moe::test::expect_bad_input;
using moe::test::TmpDir;

namespace {

void write_text(const std::string& path, const std::string& s) { std::ofstream(path) << s; }

// Captures what spdlog logs while it lives.
class LogCapture {
 public:
  LogCapture() : old_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(old_); }
  std::string text() const { return os_.str(); }

 private:
  std::ostringstream os_;
  std::shared_ptr<spdlog::logger> old_;
};

// A small valid config.json of `type` with `extra` merged in (null values remove keys).
json base_config(const std::string& type) {
  json j = {{"model_type", type},          {"vocab_size", 32},         {"hidden_size", 16},
            {"intermediate_size", 24},     {"num_hidden_layers", 2},  {"num_attention_heads", 4},
            {"num_key_value_heads", 2},    {"num_experts_per_tok", 2}, {"rms_norm_eps", 1e-6}};
  if (type == "mixtral") {
    j["num_local_experts"] = 4;
  } else {
    j["num_experts"] = 4;
    j["moe_intermediate_size"] = 8;
    j["head_dim"] = 8;
  }
  return j;
}

ModelConfig read_with(const TmpDir& d, json j, const json& extra) {
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  write_text(d / "config.json", j.dump());
  return read_hf_config(d.str());
}

std::vector<float> fill(const ParamTable& t) {
  std::vector<float> p(size_t(t.total_numel()));
  for (size_t i = 0; i < p.size(); ++i) p[i] = float(std::sin(0.37 * double(i) + 0.1)) * 0.5f;
  return p;
}

}  // namespace

// RoPE base: the class default_theta when config.json has neither rope_theta nor rope_parameters (Qwen3MoeConfig
// 1e4, MixtralConfig 1e6); rope_parameters' value wins over rope_theta; a non-empty rope_scaling replaces
// rope_parameters; per-layer-type RoPE dicts are refused.
TEST(HfFidelity, RopeThetaAsTransformersReadsIt) {
  TmpDir d;
  EXPECT_DOUBLE_EQ(read_with(d, base_config("qwen3_moe"), json::object()).rope_theta, 1e4);
  EXPECT_DOUBLE_EQ(read_with(d, base_config("mixtral"), json::object()).rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(read_with(d, base_config("qwen3_moe"), {{"rope_theta", 5e5}}).rope_theta, 5e5);
  EXPECT_DOUBLE_EQ(read_with(d, base_config("qwen3_moe"),
                             {{"rope_theta", 5e5}, {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 3e5}}}})
                       .rope_theta,
                   3e5);
  EXPECT_DOUBLE_EQ(read_with(d, base_config("mixtral"),
                             {{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 3e5}}},
                              {"rope_scaling", {{"type", "default"}, {"rope_theta", 2e5}}}})
                       .rope_theta,
                   2e5);
  expect_bad_input([&] { read_with(d, base_config("qwen3_moe"), {{"rope_scaling", {{"type", "linear"}, {"factor", 2}}}}); },
                   {"config.json", "rope_scaling", "linear"});
  expect_bad_input(
      [&] {
        read_with(d, base_config("mixtral"),
                  {{"rope_parameters", {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}}}});
      },
      {"rope_parameters.full_attention", "per layer type"});
}

// Sliding window: Mixtral's sliding_window on every layer; Qwen3-MoE's only with use_sliding_window (class
// default window 4096, null = none); layer_types must agree with what transformers applies.
TEST(HfFidelity, SlidingWindowAsTransformersReadsIt) {
  TmpDir d;
  const json mix = base_config("mixtral"), qw = base_config("qwen3_moe");
  EXPECT_EQ(read_with(d, mix, json::object()).sliding_window, 0);
  EXPECT_EQ(read_with(d, mix, {{"sliding_window", nullptr}}).sliding_window, 0);
  EXPECT_EQ(read_with(d, mix, {{"sliding_window", 4}}).sliding_window, 4);
  EXPECT_EQ(read_with(d, qw, {{"sliding_window", 4}}).sliding_window, 0);  // use_sliding_window false
  EXPECT_EQ(read_with(d, qw, {{"use_sliding_window", true}, {"sliding_window", 4}}).sliding_window, 4);
  EXPECT_EQ(read_with(d, qw, {{"use_sliding_window", true}}).sliding_window, 4096);
  EXPECT_EQ(read_with(d, qw, {{"use_sliding_window", true}, {"sliding_window", nullptr}}).sliding_window, 0);
  EXPECT_EQ(read_with(d, mix, {{"sliding_window", 4}, {"layer_types", {"sliding_attention", "sliding_attention"}}})
                .sliding_window,
            4);
  expect_bad_input([&] { read_with(d, mix, {{"sliding_window", 0}}); }, {"config.json", "'sliding_window'"});
  expect_bad_input([&] { read_with(d, mix, {{"layer_types", {"full_attention", "sliding_attention"}}}); },
                   {"layer_types[1]", "sliding_attention"});
  {
    LogCapture log;
    read_with(d, qw, {{"use_sliding_window", true}, {"sliding_window", 4}, {"max_window_layers", 1}});
    EXPECT_NE(log.text().find("max_window_layers"), std::string::npos) << log.text();
  }
}

// Every key that would change transformers' forward/backward and is not implemented stops the load naming the
// key and its value.
TEST(HfFidelity, UnimplementedMathKeysAreRefused) {
  TmpDir d;
  const json mix = base_config("mixtral"), qw = base_config("qwen3_moe");
  expect_bad_input([&] { read_with(d, mix, {{"hidden_act", "gelu"}}); }, {"config.json", "hidden_act", "gelu"});
  expect_bad_input([&] { read_with(d, qw, {{"attention_bias", true}}); }, {"attention_bias true"});
  expect_bad_input([&] { read_with(d, mix, {{"attention_dropout", 0.1}}); }, {"attention_dropout = 0.1"});
  expect_bad_input([&] { read_with(d, mix, {{"router_jitter_noise", 0.01}}); },
                   {"router_jitter_noise = 0.01", "moe.router_jitter"});
  expect_bad_input([&] { read_with(d, qw, {{"is_causal", false}}); }, {"is_causal false"});
  expect_bad_input([&] { read_with(d, qw, {{"quantization_config", {{"quant_method", "fp8"}}}}); },
                   {"quantization_config", "fp8"});
  expect_bad_input([&] { read_with(d, mix, {{"pad_token_id", 32}}); }, {"pad_token_id = 32"});
  // Keys with no effect on the math of a loaded model are accepted.
  const ModelConfig m = read_with(d, qw,
                                  {{"router_jitter_noise", 0.5}, {"output_router_logits", true},
                                   {"router_aux_loss_coef", 0.02}, {"max_position_embeddings", 77},
                                   {"use_cache", false}, {"bos_token_id", 3}, {"eos_token_id", 4},
                                   {"pad_token_id", 5}, {"partial_rotary_factor", 1.0}});
  EXPECT_EQ(m.pad_token_id, 5);
  EXPECT_EQ(read_with(d, mix, {{"pad_token_id", -1}}).pad_token_id, 31);  // torch padding_idx counts from the end
}

namespace {

// A tiny Mixtral dir: config.json + model.safetensors of fill(); `edit` may change tensors before writing.
ModelConfig write_model(const TmpDir& d, const json& extra,
                        const std::function<void(std::vector<TensorToWrite>&, std::vector<float>&)>& edit = {}) {
  json j = base_config("mixtral");
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  write_text(d / "config.json", j.dump());
  ModelConfig m;
  m.arch = Arch::Mixtral;
  m.vocab_size = 32;
  m.hidden_size = 16;
  m.intermediate_size = 24;
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.num_experts = 4;
  m.top_k = 2;
  m.tie_word_embeddings = j.value("tie_word_embeddings", false);
  const ParamTable t = build_param_table(m);
  static std::vector<float> p;
  p = fill(t);
  std::vector<TensorToWrite> w;
  for (const ParamInfo& e : t.entries()) w.push_back({e.name, e.shape, p.data() + e.offset, StDtype::F32});
  if (edit) edit(w, p);
  write_safetensors(d / "model.safetensors", w);
  return m;
}

}  // namespace

// A NaN or Inf anywhere in a loaded tensor (here an embedding row no batch may ever use) stops the load naming the
// file, the tensor and the first bad element.
TEST(HfFidelity, NonFiniteWeightsAreBadInput) {
  TmpDir d;
  const ModelConfig m = write_model(d, json::object(), [](std::vector<TensorToWrite>&, std::vector<float>& p) {
    p[size_t(31 * 16 + 3)] = std::numeric_limits<float>::quiet_NaN();  // embed_tokens row 31 (offset 0)
  });
  const ParamTable t = build_param_table(m);
  ASSERT_EQ(t.at("model.embed_tokens.weight").offset, 0);
  std::vector<float> q(size_t(t.total_numel()));
  expect_bad_input([&] { load_hf_weights(d.str(), read_hf_config(d.str()), t, q.data()); },
                   {"model.safetensors", "tensor model.embed_tokens.weight", "1 non-finite", "index 499"});
  // bf16 Inf in an expert of the fused v5 layout names the fused tensor and the expert it fills.
  TmpDir f;
  std::vector<float> p = fill(t);
  p[size_t(t.at("model.layers.1.block_sparse_moe.experts.2.w3.weight").offset + 5)] =
      std::numeric_limits<float>::infinity();
  HfSaveOptions o;
  o.dtype = StDtype::BF16;
  o.fused_experts = true;
  save_hf_model(f.str(), m, t, p.data(), o);
  expect_bad_input([&] { load_hf_weights(f.str(), read_hf_config(f.str()), t, q.data()); },
                   {"model.layers.1.mlp.experts.gate_up_proj", "experts.2.w3.weight", "non-finite"});
}

TEST(HfFidelity, UpcycleNonFiniteDenseWeightIsBadInput) {
  TmpDir d;
  json j = {{"model_type", "llama"},  {"vocab_size", 32},        {"hidden_size", 16},       {"intermediate_size", 24},
            {"num_hidden_layers", 1}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}};
  write_text(d / "config.json", j.dump());
  const i64 V = 32, H = 16, I = 24, KV = 2 * 4;
  std::vector<std::pair<std::string, std::vector<i64>>> shapes = {
      {"model.embed_tokens.weight", {V, H}},
      {"model.norm.weight", {H}},
      {"lm_head.weight", {V, H}},
      {"model.layers.0.input_layernorm.weight", {H}},
      {"model.layers.0.post_attention_layernorm.weight", {H}},
      {"model.layers.0.self_attn.q_proj.weight", {H, H}},
      {"model.layers.0.self_attn.k_proj.weight", {KV, H}},
      {"model.layers.0.self_attn.v_proj.weight", {KV, H}},
      {"model.layers.0.self_attn.o_proj.weight", {H, H}},
      {"model.layers.0.mlp.gate_proj.weight", {I, H}},
      {"model.layers.0.mlp.up_proj.weight", {I, H}},
      {"model.layers.0.mlp.down_proj.weight", {H, I}}};
  std::vector<std::vector<float>> data;
  std::vector<TensorToWrite> w;
  for (const auto& [name, shape] : shapes) {
    i64 n = 1;
    for (i64 s : shape) n *= s;
    data.emplace_back(size_t(n), 0.01f);
  }
  data[0][size_t(30 * H)] = std::numeric_limits<float>::quiet_NaN();  // unused embedding row 30
  for (size_t i = 0; i < shapes.size(); ++i) w.push_back({shapes[i].first, shapes[i].second, data[i].data()});
  write_safetensors(d / "model.safetensors", w);
  UpcycleConfig u;
  u.from = d.str();
  u.num_experts = 2;
  u.top_k = 1;
  expect_bad_input([&] { upcycle_dense(u, 1, 0.02); },
                   {"upcycle.from", "model.safetensors", "tensor model.embed_tokens.weight", "non-finite",
                    "index 480"});
}

// tie_word_embeddings with a file that also holds lm_head.weight: equal → tied, silently; different → not tied
// (as transformers 5.x), with a warning naming the tensor and what is used.
TEST(HfFidelity, TiedConfigWithDifferingLmHeadWarnsAndUnties) {
  TmpDir d;
  std::vector<float> lm(32 * 16, 0.25f);
  write_model(d, {{"tie_word_embeddings", true}}, [&](std::vector<TensorToWrite>& w, std::vector<float>& p) {
    w.push_back({"lm_head.weight", {32, 16}, lm.data()});
    (void)p;
  });
  {
    LogCapture log;
    const ModelConfig m = read_hf_config(d.str());
    EXPECT_FALSE(m.tie_word_embeddings);
    const std::string t = log.text();
    EXPECT_NE(t.find("lm_head.weight differs from model.embed_tokens.weight"), std::string::npos) << t;
    EXPECT_NE(t.find("lm_head.weight is used"), std::string::npos) << t;
    const ParamTable tab = build_param_table(m);
    std::vector<float> q(size_t(tab.total_numel()));
    load_hf_weights(d.str(), m, tab, q.data());
    EXPECT_EQ(q[size_t(tab.at("lm_head.weight").offset)], 0.25f);
  }
  TmpDir e;
  write_model(e, {{"tie_word_embeddings", true}}, [&](std::vector<TensorToWrite>& w, std::vector<float>& p) {
    w.push_back({"lm_head.weight", {32, 16}, p.data()});  // same values as the embeddings (offset 0)
  });
  LogCapture log;
  EXPECT_TRUE(read_hf_config(e.str()).tie_word_embeddings);
  EXPECT_EQ(log.text().find("lm_head"), std::string::npos) << log.text();
}

// Export: the source's config.json keys survive (token ids, max_position_embeddings, rope_scaling, anything not
// architecture), the architecture keys are ours, dtype is written in both spellings, router_aux_loss_coef is the
// trained one, the side files are copied. A dense source gives token ids and files only; no source: class defaults.
TEST(HfFidelity, ExportKeepsSourceMetadata) {
  TmpDir src, out, dense_out, none_out;
  json s = base_config("mixtral");
  s["bos_token_id"] = 5;
  s["eos_token_id"] = 7;
  s["pad_token_id"] = 0;
  s["max_position_embeddings"] = 777;
  s["rope_scaling"] = nullptr;
  s["output_router_logits"] = true;
  s["router_aux_loss_coef"] = 0.5;
  s["transformers_version"] = "5.24.0";
  s["sliding_window"] = 4;
  write_text(src / "config.json", s.dump());
  write_text(src / "generation_config.json", R"({"bos_token_id": 5, "eos_token_id": 7})");
  write_text(src / "tokenizer.json", "{\"tok\": 1}");
  write_text(src / "tokenizer_config.json", "{}");
  write_text(src / "chat_template.jinja", "{{ messages }}");
  const ModelConfig m = read_hf_config(src.str());
  ASSERT_EQ(m.sliding_window, 4);
  const ParamTable t = build_param_table(m);
  const std::vector<float> p = fill(t);
  HfSaveOptions o;
  o.dtype = StDtype::BF16;
  o.meta = {HfMetaSource::MoeModel, src.str(), 0.0125};
  save_hf_model(out.str(), m, t, p.data(), o);
  std::ifstream in(out / "config.json");
  const json c = json::parse(in);
  EXPECT_EQ(c["bos_token_id"], 5);
  EXPECT_EQ(c["eos_token_id"], 7);
  EXPECT_EQ(c["pad_token_id"], 0);
  EXPECT_EQ(c["max_position_embeddings"], 777);
  EXPECT_TRUE(c.contains("rope_scaling") && c["rope_scaling"].is_null());
  EXPECT_EQ(c["output_router_logits"], true);
  EXPECT_EQ(c["router_aux_loss_coef"], 0.0125);
  EXPECT_EQ(c["transformers_version"], "5.24.0");
  EXPECT_EQ(c["dtype"], "bfloat16");
  EXPECT_EQ(c["torch_dtype"], "bfloat16");
  EXPECT_EQ(c["sliding_window"], 4);
  EXPECT_EQ(c["num_local_experts"], 4);
  for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}) {
    ASSERT_TRUE(fs::exists(out / f)) << f;
    std::ifstream a(src / f), b(out / f);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}), std::string(std::istreambuf_iterator<char>(b), {}))
        << f;
  }
  EXPECT_FALSE(fs::exists(out / "tokenizer.model"));

  o.meta = {HfMetaSource::DenseModel, src.str(), std::nullopt};
  save_hf_model(dense_out.str(), m, t, p.data(), o);
  std::ifstream in2(dense_out / "config.json");
  const json c2 = json::parse(in2);
  EXPECT_EQ(c2["eos_token_id"], 7);
  EXPECT_EQ(c2["max_position_embeddings"], 777);
  EXPECT_EQ(c2["output_router_logits"], false);  // not taken from a dense source
  EXPECT_EQ(c2["router_aux_loss_coef"], 0.001);
  EXPECT_FALSE(c2.contains("transformers_version"));
  EXPECT_TRUE(fs::exists(dense_out / "tokenizer.json"));

  ModelConfig q = m;
  q.arch = Arch::Qwen3Moe;
  q.moe_intermediate_size = 8;
  q.head_dim = 8;
  const ParamTable tq = build_param_table(q);
  save_hf_model(none_out.str(), q, tq, fill(tq).data());
  std::ifstream in3(none_out / "config.json");
  const json c3 = json::parse(in3);
  EXPECT_TRUE(c3["bos_token_id"].is_null());  // Qwen3MoeConfig defaults
  EXPECT_TRUE(c3["eos_token_id"].is_null());
  EXPECT_EQ(c3["max_position_embeddings"], 32768);
  EXPECT_EQ(c3["use_sliding_window"], true);
  EXPECT_EQ(c3["sliding_window"], 4);
  EXPECT_FALSE(fs::exists(none_out / "tokenizer.json"));
  EXPECT_EQ(read_hf_config(none_out.str()).sliding_window, 4);  // round trip
}
