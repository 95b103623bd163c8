// Tests src/io/upcycle.*: dense Llama/Qwen3 dirs → MoE config and weights (expert copies, noise, router, DUS, errors).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

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

// Tiny dense shape: V 40, H 16, I 24, 4 heads (2 kv), L layers.
struct Dense {
  std::string model_type = "llama";
  int V = 40, H = 16, I = 24, L = 2, NH = 4, NKV = 2, D = 4;
  bool tie = false;
  json extra = json::object();  // merged into config.json
};

// Writes DIR/config.json + DIR/model.safetensors (or, `sharded`, two shards + index.json) of a random dense model
// with tensors in `dtype`; returns the fp32 tensors by name (before any bf16 rounding).
std::map<std::string, std::vector<float>> write_dense(const std::string& dir, const Dense& d, uint32_t seed = 1,
                                                      StDtype dtype = StDtype::F32, bool sharded = false) {
  fs::create_directories(dir);
  json c = {{"architectures", {d.model_type == "qwen3" ? "Qwen3ForCausalLM" : "LlamaForCausalLM"}},
            {"model_type", d.model_type},
            {"vocab_size", d.V},
            {"hidden_size", d.H},
            {"intermediate_size", d.I},
            {"num_hidden_layers", d.L},
            {"num_attention_heads", d.NH},
            {"num_key_value_heads", d.NKV},
            {"head_dim", d.D},
            {"hidden_act", "silu"},
            {"rms_norm_eps", 1e-5},
            {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 5e5}}},
            {"tie_word_embeddings", d.tie},
            {"attention_bias", false},
            {"torch_dtype", "float32"}};
  if (d.model_type == "llama") c["mlp_bias"] = false;
  c.merge_patch(d.extra);
  std::ofstream(dir + "/config.json") << c.dump(2);

  std::map<std::string, std::vector<i64>> shapes;
  shapes["model.embed_tokens.weight"] = {d.V, d.H};
  shapes["model.norm.weight"] = {d.H};
  if (!d.tie) shapes["lm_head.weight"] = {d.V, d.H};
  for (int l = 0; l < d.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes[p + "input_layernorm.weight"] = {d.H};
    shapes[p + "post_attention_layernorm.weight"] = {d.H};
    shapes[p + "self_attn.q_proj.weight"] = {d.NH * d.D, d.H};
    shapes[p + "self_attn.k_proj.weight"] = {d.NKV * d.D, d.H};
    shapes[p + "self_attn.v_proj.weight"] = {d.NKV * d.D, d.H};
    shapes[p + "self_attn.o_proj.weight"] = {d.H, d.NH * d.D};
    if (d.model_type == "qwen3") {
      shapes[p + "self_attn.q_norm.weight"] = {d.D};
      shapes[p + "self_attn.k_norm.weight"] = {d.D};
    }
    shapes[p + "mlp.gate_proj.weight"] = {d.I, d.H};
    shapes[p + "mlp.up_proj.weight"] = {d.I, d.H};
    shapes[p + "mlp.down_proj.weight"] = {d.H, d.I};
  }
  std::map<std::string, std::vector<float>> w;
  uint32_t s = seed * 2654435761u + 12345u;
  for (const auto& [name, shape] : shapes) {
    i64 n = 1;
    for (i64 x : shape) n *= x;
    std::vector<float>& v = w[name];
    v.resize(size_t(n));
    for (float& x : v) {
      s = s * 1664525u + 1013904223u;
      x = float(int(s >> 8) % 20001 - 10000) * 1e-5f;  // uniform-ish in [-0.1, 0.1]
    }
  }
  std::vector<TensorToWrite> tw[2];
  json index;
  int i = 0;
  for (const auto& [name, v] : w) {
    const int shard = sharded ? i++ % 2 : 0;
    tw[shard].push_back({name, shapes[name], v.data(), dtype});
    index["weight_map"][name] = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
  }
  if (!sharded) {
    write_safetensors(dir + "/model.safetensors", tw[0]);
    return w;
  }
  for (int k = 0; k < 2; ++k)
    write_safetensors(dir + "/model-0000" + std::to_string(k + 1) + "-of-00002.safetensors", tw[k]);
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  return w;
}

std::vector<float> get(const UpcycledModel& up, const std::string& name) {
  const ParamTable t = build_param_table(up.model);
  const ParamInfo& p = t.at(name);
  return std::vector<float>(up.params.begin() + p.offset, up.params.begin() + p.offset + p.numel);
}

UpcycleConfig ucfg(const std::string& from, int E = 4, int k = 2, double noise = 0, double depth = 0) {
  UpcycleConfig u;
  u.from = from;
  u.num_experts = E;
  u.top_k = k;
  u.noise = noise;
  u.depth_pct = depth;
  return u;
}

double stddev(const std::vector<float>& v) {
  double m = 0, s = 0;
  for (float x : v) m += x;
  m /= double(v.size());
  for (float x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size()));
}

// Checks every tensor of `up` against the dense tensors (noise 0): layer l copies dense layer src[l].
void expect_exact_copies(const UpcycledModel& up, const std::map<std::string, std::vector<float>>& w,
                         const std::vector<int>& src) {
  const ModelConfig& m = up.model;
  EXPECT_EQ(get(up, "model.embed_tokens.weight"), w.at("model.embed_tokens.weight"));
  EXPECT_EQ(get(up, "model.norm.weight"), w.at("model.norm.weight"));
  if (!m.tie_word_embeddings) {
    EXPECT_EQ(get(up, "lm_head.weight"), w.at("lm_head.weight"));
  }
  ASSERT_EQ(int(src.size()), m.num_layers);
  for (int l = 0; l < m.num_layers; ++l) {
    const LayerNames n = layer_names(m, l);
    const std::string d = "model.layers." + std::to_string(src[size_t(l)]) + ".";
    EXPECT_EQ(get(up, n.input_norm), w.at(d + "input_layernorm.weight"));
    EXPECT_EQ(get(up, n.post_norm), w.at(d + "post_attention_layernorm.weight"));
    EXPECT_EQ(get(up, n.q), w.at(d + "self_attn.q_proj.weight"));
    EXPECT_EQ(get(up, n.k), w.at(d + "self_attn.k_proj.weight"));
    EXPECT_EQ(get(up, n.v), w.at(d + "self_attn.v_proj.weight"));
    EXPECT_EQ(get(up, n.o), w.at(d + "self_attn.o_proj.weight"));
    if (m.arch == Arch::Qwen3Moe) {
      EXPECT_EQ(get(up, n.q_norm), w.at(d + "self_attn.q_norm.weight"));
      EXPECT_EQ(get(up, n.k_norm), w.at(d + "self_attn.k_norm.weight"));
    }
    for (int e = 0; e < m.num_experts; ++e) {
      EXPECT_EQ(get(up, n.w1[size_t(e)]), w.at(d + "mlp.gate_proj.weight")) << n.w1[size_t(e)];
      EXPECT_EQ(get(up, n.w3[size_t(e)]), w.at(d + "mlp.up_proj.weight")) << n.w3[size_t(e)];
      EXPECT_EQ(get(up, n.w2[size_t(e)]), w.at(d + "mlp.down_proj.weight")) << n.w2[size_t(e)];
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- config + exact copies

TEST(Upcycle, LlamaBecomesMixtralWithIdenticalExperts) {
  TmpDir t;
  Dense d;
  const auto w = write_dense(t.str(), d);
  const UpcycledModel up = upcycle_dense(ucfg(t.str(), 4, 2), 7, 0.02);
  const ModelConfig& m = up.model;
  EXPECT_EQ(m.arch, Arch::Mixtral);
  EXPECT_EQ(m.num_experts, 4);
  EXPECT_EQ(m.top_k, 2);
  EXPECT_EQ(m.expert_width(), d.I);
  EXPECT_EQ(m.intermediate_size, d.I);
  EXPECT_TRUE(m.norm_topk_prob);
  EXPECT_EQ(m.num_layers, d.L);
  EXPECT_EQ(m.vocab_size, d.V);
  EXPECT_EQ(m.hidden_size, d.H);
  EXPECT_EQ(m.num_heads, d.NH);
  EXPECT_EQ(m.num_kv_heads, d.NKV);
  EXPECT_EQ(m.resolved_head_dim(), d.D);
  EXPECT_DOUBLE_EQ(m.rope_theta, 5e5);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-5);
  EXPECT_FALSE(m.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(m.init_std, 0.02);
  EXPECT_EQ(up.params.size(), size_t(build_param_table(m).total_numel()));
  expect_exact_copies(up, w, {0, 1});

  // Router: fresh N(0, init_std), not zero, different per layer.
  const auto r0 = get(up, "model.layers.0.block_sparse_moe.gate.weight");
  const auto r1 = get(up, "model.layers.1.block_sparse_moe.gate.weight");
  EXPECT_EQ(r0.size(), size_t(4 * d.H));
  EXPECT_NE(r0, r1);
  EXPECT_NEAR(stddev(r0), 0.02, 0.006);
}

TEST(Upcycle, Qwen3BecomesQwen3MoeWithQkNormAndAllLayersSparse) {
  TmpDir t;
  Dense d;
  d.model_type = "qwen3";
  d.L = 3;
  d.tie = true;
  d.extra = {{"use_sliding_window", false}, {"sliding_window", nullptr}, {"max_window_layers", 3},
             {"layer_types", {"full_attention", "full_attention", "full_attention"}}};
  const auto w = write_dense(t.str(), d);
  const UpcycledModel up = upcycle_dense(ucfg(t.str(), 6, 3), 7, 0.05);
  const ModelConfig& m = up.model;
  EXPECT_EQ(m.arch, Arch::Qwen3Moe);
  EXPECT_EQ(m.moe_intermediate_size, d.I);
  EXPECT_EQ(m.intermediate_size, d.I);
  EXPECT_EQ(m.expert_width(), d.I);
  EXPECT_TRUE(m.norm_topk_prob);
  EXPECT_TRUE(m.mlp_only_layers.empty());
  EXPECT_EQ(m.decoder_sparse_step, 1);
  for (int l = 0; l < m.num_layers; ++l) EXPECT_TRUE(m.is_moe_layer(l));
  EXPECT_TRUE(m.tie_word_embeddings);
  EXPECT_EQ(build_param_table(m).find("lm_head.weight"), nullptr);
  expect_exact_copies(up, w, {0, 1, 2});
  EXPECT_NEAR(stddev(get(up, "model.layers.2.mlp.gate.weight")), 0.05, 0.015);
}

// The upcycled model written by save_hf_model reads back as the same MoE config and weights.
TEST(Upcycle, SavedModelReadsBack) {
  TmpDir t, out;
  Dense d;
  d.model_type = "qwen3";
  write_dense(t.str(), d);
  const UpcycledModel up = upcycle_dense(ucfg(t.str(), 4, 2, 0.1, 50), 3, 0.02);
  const ParamTable table = build_param_table(up.model);
  save_hf_model(out.str(), up.model, table, up.params.data());
  const ModelConfig back = read_hf_config(out.str());
  EXPECT_EQ(back.arch, up.model.arch);
  EXPECT_EQ(back.num_layers, up.model.num_layers);
  EXPECT_EQ(back.expert_width(), up.model.expert_width());
  EXPECT_EQ(back.num_experts, 4);
  EXPECT_EQ(back.top_k, 2);
  EXPECT_TRUE(back.norm_topk_prob);
  EXPECT_TRUE(back.mlp_only_layers.empty());
  std::vector<float> loaded(up.params.size());
  load_hf_weights(out.str(), back, build_param_table(back), loaded.data());
  EXPECT_EQ(loaded, up.params);
}

// ---------------------------------------------------------------- noise

TEST(Upcycle, NoiseHasExpectedRelativeMagnitudeAndIsDeterministic) {
  TmpDir t;
  Dense d;
  d.H = 64;
  d.I = 96;
  d.NH = 4;
  d.D = 16;
  const auto w = write_dense(t.str(), d);
  const double noise = 0.05;
  const UpcycledModel a = upcycle_dense(ucfg(t.str(), 4, 2, noise), 11, 0.02);
  const UpcycledModel b = upcycle_dense(ucfg(t.str(), 4, 2, noise), 11, 0.02);
  const UpcycledModel c = upcycle_dense(ucfg(t.str(), 4, 2, noise), 12, 0.02);
  EXPECT_EQ(a.params, b.params);  // same seed → bit-identical
  EXPECT_NE(a.params, c.params);

  const LayerNames n = layer_names(a.model, 1);
  const auto& gate = w.at("model.layers.1.mlp.gate_proj.weight");
  const double sw = stddev(gate);
  std::vector<std::vector<float>> experts;
  for (int e = 0; e < 4; ++e) {
    const auto x = get(a, n.w1[size_t(e)]);
    std::vector<float> diff(x.size());
    for (size_t i = 0; i < x.size(); ++i) diff[i] = x[i] - gate[i];
    // noise · std(W) · N(0,1): 6144 draws → the sample std is within a few % of the target.
    EXPECT_NEAR(stddev(diff) / sw, noise, 0.1 * noise) << n.w1[size_t(e)];
    experts.push_back(x);
  }
  EXPECT_NE(experts[0], experts[1]);  // each expert gets its own noise
  // Non-expert tensors never get noise.
  EXPECT_EQ(get(a, n.q), w.at("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_EQ(get(a, "model.embed_tokens.weight"), w.at("model.embed_tokens.weight"));
  // Routers do not depend on the noise setting.
  const UpcycledModel z = upcycle_dense(ucfg(t.str(), 4, 2, 0.0), 11, 0.02);
  EXPECT_EQ(get(a, n.router), get(z, n.router));
}

// ---------------------------------------------------------------- depth up-scaling

TEST(Upcycle, DusRule) {
  EXPECT_EQ(dus_source_layers(4, 0), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(dus_source_layers(4, 100), (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(dus_source_layers(4, 50), (std::vector<int>{0, 1, 1, 2, 2, 3}));
  EXPECT_EQ(dus_source_layers(4, 25), (std::vector<int>{0, 1, 2, 2, 3}));
  EXPECT_EQ(dus_source_layers(10, 20), (std::vector<int>{0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9}));
  EXPECT_EQ(dus_source_layers(4, 12), (std::vector<int>{0, 1, 2, 3}));       // 0.48 layers → 0
  EXPECT_EQ(dus_source_layers(4, 12.5).size(), 5u);                         // 0.5 → 1 (half up)
  EXPECT_EQ(dus_source_layers(28, 20).size(), 34u);                         // Surogate's Qwen3-0.6B example
  for (int L = 1; L <= 40; ++L)
    for (double p : {0.0, 1.0, 10.0, 33.3, 50.0, 99.0, 100.0}) {
      const auto s = dus_source_layers(L, p);
      EXPECT_EQ(int(s.size()), L + int(std::floor(p / 100 * L + 0.5)));
      for (size_t i = 1; i < s.size(); ++i) EXPECT_TRUE(s[i] == s[i - 1] || s[i] == s[i - 1] + 1);
      EXPECT_EQ(s.front(), 0);
      EXPECT_EQ(s.back(), L - 1);
    }
  expect_bad_input([] { dus_source_layers(4, 101); }, {"upcycle.depth_pct"});
}

TEST(Upcycle, DepthPctDuplicatesLayersInPlace) {
  TmpDir t;
  Dense d;
  d.L = 4;
  const auto w = write_dense(t.str(), d);
  const UpcycledModel full = upcycle_dense(ucfg(t.str(), 2, 1, 0, 100), 5, 0.02);
  EXPECT_EQ(full.model.num_layers, 8);
  expect_exact_copies(full, w, {0, 0, 1, 1, 2, 2, 3, 3});
  const UpcycledModel half = upcycle_dense(ucfg(t.str(), 2, 1, 0, 50), 5, 0.02);
  EXPECT_EQ(half.model.num_layers, 6);
  expect_exact_copies(half, w, {0, 1, 1, 2, 2, 3});
  // A duplicated layer gets its own router (keyed by its new name).
  EXPECT_NE(get(half, "model.layers.1.block_sparse_moe.gate.weight"),
            get(half, "model.layers.2.block_sparse_moe.gate.weight"));
}

// ---------------------------------------------------------------- a rank's local table

TEST(Upcycle, LocalTableGetsTheSameValuesAsTheFullModel) {
  TmpDir t;
  Dense d;
  d.model_type = "qwen3";
  write_dense(t.str(), d);
  const UpcycleConfig u = ucfg(t.str(), 4, 2, 0.2, 50);
  const UpcycledModel full = upcycle_dense(u, 9, 0.02);
  const ParamTable ft = build_param_table(full.model);
  const ParamTable local = build_param_table(full.model, ExpertRange{2, 2}, 3, 5);
  std::vector<float> p(size_t(local.total_numel()), -7.f);
  upcycle_weights(u, 9, full.model, local, p.data());
  for (const ParamInfo& e : local.entries()) {
    const ParamInfo& f = ft.at(e.name);
    EXPECT_TRUE(std::equal(p.begin() + e.offset, p.begin() + e.offset + e.numel, full.params.begin() + f.offset))
        << e.name;
  }
}

TEST(Upcycle, AcceptsBf16AndShardedDenseWeights) {
  TmpDir t;
  Dense d;
  const auto w = write_dense(t.str(), d, 1, StDtype::BF16, true);
  ASSERT_FALSE(fs::exists(t / "model.safetensors"));
  const UpcycledModel up = upcycle_dense(ucfg(t.str()), 1, 0.02);
  const auto g = get(up, "model.layers.1.block_sparse_moe.experts.3.w2.weight");
  const auto& want = w.at("model.layers.1.mlp.down_proj.weight");
  ASSERT_EQ(g.size(), want.size());
  for (size_t k = 0; k < g.size(); ++k) EXPECT_EQ(g[k], bf16_to_f32(f32_to_bf16(want[k])));
}

// ---------------------------------------------------------------- bad input

TEST(Upcycle, BadModelTypeIsBadInput) {
  TmpDir t;
  Dense d;
  d.model_type = "gpt2";
  write_dense(t.str(), d);
  expect_bad_input([&] { upcycle_dense(ucfg(t.str()), 1, 0.02); },
                   {"model_type 'gpt2'", "llama", "mistral", "qwen3", "config.json"});
  TmpDir t2;
  d.model_type = "mixtral";
  write_dense(t2.str(), d);
  expect_bad_input([&] { upcycle_dense(ucfg(t2.str()), 1, 0.02); }, {"already an MoE", "model.init_from"});
}

TEST(Upcycle, UnsupportedDenseFeaturesAreBadInput) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"attention_bias", true}}, "attention_bias"},
      {{{"mlp_bias", true}}, "mlp_bias"},
      {{{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}}, "rope_scaling"},
      {{{"rope_parameters", {{"rope_type", "yarn"}, {"rope_theta", 1e4}}}}, "rope_type"},
      {{{"hidden_act", "gelu"}}, "hidden_act"},
      {{{"num_hidden_layers", nullptr}}, "num_hidden_layers"},
  };
  for (const auto& [extra, key] : cases) {
    TmpDir t;
    Dense d;
    d.extra = extra;
    write_dense(t.str(), d);
    expect_bad_input([&] { upcycle_dense(ucfg(t.str()), 1, 0.02); }, {key});
  }
  TmpDir t;
  Dense d;
  d.model_type = "mistral";
  d.extra = {{"sliding_window", 4096}};
  write_dense(t.str(), d);
  expect_bad_input([&] { upcycle_dense(ucfg(t.str()), 1, 0.02); }, {"sliding_window"});
}

TEST(Upcycle, MissingOrMisshapenDenseTensorsAreBadInput) {
  {  // tied embeddings not declared → lm_head missing, with the hint
    TmpDir t;
    Dense d;
    d.tie = true;
    write_dense(t.str(), d);
    json c = json::parse(std::ifstream(t / "config.json"));
    c["tie_word_embeddings"] = false;
    std::ofstream(t / "config.json") << c.dump();
    expect_bad_input([&] { upcycle_dense(ucfg(t.str()), 1, 0.02); }, {"lm_head.weight", "tie_word_embeddings"});
  }
  {  // config says a wider MLP than the tensors hold
    TmpDir t;
    Dense d;
    write_dense(t.str(), d);
    json c = json::parse(std::ifstream(t / "config.json"));
    c["intermediate_size"] = d.I + 8;
    std::ofstream(t / "config.json") << c.dump();
    expect_bad_input([&] { upcycle_dense(ucfg(t.str()), 1, 0.02); }, {"mlp.", "has shape"});
  }
  expect_bad_input([] { upcycle_dense(ucfg("/nonexistent/dense"), 1, 0.02); }, {"upcycle.from", "config.json"});
  TmpDir t;
  write_dense(t.str(), Dense{});
  expect_bad_input([&] { upcycle_dense(ucfg(t.str(), 2, 3), 1, 0.02); }, {"upcycle.top_k"});
}
