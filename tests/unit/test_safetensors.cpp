// Tests src/io/safetensors.* and src/io/hf_model.*: format validation, dtypes, HF directories, both expert layouts.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/hf_model.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace moe;
using moe::test::expect_bad_input;
using moe::test::TmpDir;

namespace {

// A raw safetensors file: 8-byte length, header text as given, data bytes.
void write_raw(const std::string& path, const std::string& header, const std::vector<uint8_t>& data,
               uint64_t declared_len = UINT64_MAX) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = declared_len == UINT64_MAX ? header.size() : declared_len;
  for (int i = 0; i < 8; ++i) out.put(char(n >> (8 * i)));
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
}

std::vector<float> read_f32(const TensorEntry& t) {
  std::vector<float> v(size_t(t.numel()));
  convert_to_f32(t, v.data());
  return v;
}

float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

ModelConfig tiny(Arch arch) {
  ModelConfig m;
  m.arch = arch;
  m.vocab_size = 32;
  m.hidden_size = 16;
  m.intermediate_size = 24;
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.num_experts = 4;
  m.top_k = 2;
  m.rope_theta = 10000.0;
  m.rms_norm_eps = 1e-6;
  m.init_std = 0.03;
  if (arch == Arch::Qwen3Moe) {
    m.moe_intermediate_size = 8;
    m.head_dim = 8;
    m.norm_topk_prob = true;
    m.tie_word_embeddings = true;
    m.mlp_only_layers = {1};
  }
  return m;
}

std::vector<float> fill(const ParamTable& t) {
  std::vector<float> p(size_t(t.total_numel()));
  for (size_t i = 0; i < p.size(); ++i) p[i] = float(std::sin(0.37 * double(i) + 0.1)) * 0.5f;
  return p;
}

void expect_same_model(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.expert_width(), b.expert_width());
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.resolved_head_dim(), b.resolved_head_dim());
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.top_k, b.top_k);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_DOUBLE_EQ(a.rope_theta, b.rope_theta);
  EXPECT_DOUBLE_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(a.init_std, b.init_std);
  EXPECT_EQ(a.mlp_only_layers, b.mlp_only_layers);
  EXPECT_EQ(a.decoder_sparse_step, b.decoder_sparse_step);
  for (int l = 0; l < a.num_layers; ++l) EXPECT_EQ(a.is_moe_layer(l), b.is_moe_layer(l));
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

// ---------------------------------------------------------------- format

TEST(Safetensors, RoundTripF32) {
  TmpDir d;
  std::vector<float> a = {1.5f, -2.25f, 3e-30f, 7.f, 0.f, -0.f}, b = {1, 2, 3, 4}, c = {42.f};
  write_safetensors(d / "x.safetensors", {{"a", {2, 3}, a.data(), StDtype::F32},
                                          {"b", {4}, b.data(), StDtype::F32},
                                          {"c", {}, c.data(), StDtype::F32},
                                          {"z", {0, 5}, nullptr, StDtype::F32}},
                    {{"step", "7"}});
  EXPECT_FALSE(fs::exists(d / "x.safetensors.tmp"));
  SafetensorsFile f = SafetensorsFile::open(d / "x.safetensors");
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("step"), "7");
  const TensorEntry* ta = f.find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, "F32");
  EXPECT_EQ(ta->shape, (std::vector<i64>{2, 3}));
  EXPECT_EQ(read_f32(*ta), a);
  EXPECT_EQ(read_f32(*f.find("b")), b);
  EXPECT_EQ(f.find("c")->shape.size(), 0u);
  EXPECT_EQ(read_f32(*f.find("c")), c);
  EXPECT_EQ(f.find("z")->nbytes, 0u);
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_TRUE(std::signbit(read_f32(*ta)[5]));
  // Header padded to a multiple of 8 so the data buffer starts 8-byte aligned.
  std::ifstream in(d / "x.safetensors", std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta->data) % 8, 0u);
}

TEST(Safetensors, RoundTripBf16RoundsToNearestEven) {
  TmpDir d;
  // 1 + 2^-8 is halfway between bf16 0x3F80 and 0x3F81 → even 0x3F80; 1 + 3·2^-8 → even 0x3F82;
  // just above a half rounds up; exact values stay; NaN stays NaN.
  std::vector<float> v = {1.0f, bits_to_f32(0x3F808000u), bits_to_f32(0x3F818000u), bits_to_f32(0x3F808001u),
                          -2.5f, bits_to_f32(0x3F80FFFFu), std::nanf("")};
  std::vector<uint16_t> want = {0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC020, 0x3F81};
  std::vector<float> big = {0.25f, 0.5f};
  write_safetensors(d / "b.safetensors",
                    {{"w", {7}, v.data(), StDtype::BF16}, {"f", {2}, big.data(), StDtype::F32}});
  SafetensorsFile f = SafetensorsFile::open(d / "b.safetensors");
  const TensorEntry* t = f.find("w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, "BF16");
  EXPECT_EQ(t->nbytes, 14u);
  for (size_t i = 0; i < want.size(); ++i) {
    const uint16_t got = uint16_t(t->data[2 * i] | (t->data[2 * i + 1] << 8));
    EXPECT_EQ(got, want[i]) << "element " << i;
  }
  std::vector<float> back = read_f32(*t);
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], 1.0f);
  EXPECT_EQ(back[2], 1.015625f);   // 0x3F82 = 1 + 2/128
  EXPECT_EQ(back[3], 1.0078125f);  // 0x3F81 = 1 + 1/128
  EXPECT_EQ(back[4], -2.5f);
  EXPECT_TRUE(std::isnan(back[6]));
  EXPECT_EQ(read_f32(*f.find("f")), big);
  // F32 (4-byte) tensors come first: every tensor naturally aligned.
  EXPECT_LT(f.find("f")->data, t->data);
}

TEST(Safetensors, ConvertsF16AndF64AndRejectsIntegers) {
  TmpDir d;
  // F16: 1.0, -2.0, 0.5, 2^-24 (smallest subnormal), 65504 (max), +inf
  std::vector<uint16_t> h = {0x3C00, 0xC000, 0x3800, 0x0001, 0x7BFF, 0x7C00};
  std::vector<double> g = {0.1, -1e300};
  std::vector<int32_t> ints = {1, 2};
  std::vector<uint8_t> data(12 + 16 + 8);
  std::memcpy(data.data(), h.data(), 12);
  std::memcpy(data.data() + 12, g.data(), 16);
  std::memcpy(data.data() + 28, ints.data(), 8);
  const std::string hdr =
      R"({"h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("g":{"dtype":"F64","shape":[2],"data_offsets":[12,28]},)"
      R"("i":{"dtype":"I32","shape":[2],"data_offsets":[28,36]}})";
  write_raw(d / "m.safetensors", hdr, data);
  SafetensorsFile f = SafetensorsFile::open(d / "m.safetensors");
  std::vector<float> hv = read_f32(*f.find("h"));
  EXPECT_EQ(hv[0], 1.0f);
  EXPECT_EQ(hv[1], -2.0f);
  EXPECT_EQ(hv[2], 0.5f);
  EXPECT_EQ(hv[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(hv[4], 65504.0f);
  EXPECT_TRUE(std::isinf(hv[5]));
  std::vector<float> gv = read_f32(*f.find("g"));
  EXPECT_EQ(gv[0], 0.1f);
  EXPECT_TRUE(std::isinf(gv[1]) && gv[1] < 0);
  expect_bad_input([&] { read_f32(*f.find("i")); }, {"tensor i", "I32"});
}

TEST(Safetensors, TruncatedFileIsBadInput) {
  TmpDir d;
  std::vector<float> a(64, 1.0f);
  const std::string p = d / "t.safetensors";
  write_safetensors(p, {{"a", {64}, a.data(), StDtype::F32}});
  const auto full = fs::file_size(p);
  fs::resize_file(p, full - 10);
  expect_bad_input([&] { SafetensorsFile::open(p); },
                   {p, "truncated", "file has " + std::to_string(full - 10) + " bytes", std::to_string(full)});
  fs::resize_file(p, 5);
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"truncated", "5 bytes"});
  write_raw(p, "{}", {}, 1000);  // header length beyond the file
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"truncated"});
  write_raw(p, "{}", {}, uint64_t(1) << 40);
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"header length"});
  expect_bad_input([&] { SafetensorsFile::open(d / "absent.safetensors"); }, {"absent.safetensors", "cannot open"});
}

TEST(Safetensors, CorruptHeaderJsonIsBadInput) {
  TmpDir d;
  const std::string p = d / "c.safetensors";
  write_raw(p, R"({"a": {"dtype": "F32", "shape": [1], )", {0, 0, 0, 0});
  expect_bad_input([&] { SafetensorsFile::open(p); }, {p, "invalid JSON"});
  write_raw(p, "[1, 2]  ", {});
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"must start with '{'"});
  write_raw(p, R"({"a": {"dtype": "F32", "shape": [1]}})", {0, 0, 0, 0});
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"tensor 'a'", "data_offsets"});
  write_raw(p, R"({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}})", {0, 0, 0, 0});
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"unknown dtype 'Q9'"});
  write_raw(p, R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", {0, 0, 0, 0});
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"shape"});
  write_raw(p, R"({"__metadata__": {"n": 3}})", {});
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"__metadata__"});
  write_raw(p,
            R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
            R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
            std::vector<uint8_t>(8, 0));
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"'a' appears twice"});
  // Padding with spaces after the JSON and an empty header are fine.
  write_raw(p, R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}      )", {7, 8, 9});
  EXPECT_EQ(SafetensorsFile::open(p).find("a")->data[2], 9);
  write_raw(p, "{}", {});
  EXPECT_TRUE(SafetensorsFile::open(p).tensors().empty());
}

TEST(Safetensors, BadOffsetsIsBadInput) {
  TmpDir d;
  const std::string p = d / "o.safetensors";
  std::vector<uint8_t> eight(8, 0);
  auto two = [](int b0, int e0, int b1, int e1) {
    return R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[)" + std::to_string(b0) + "," + std::to_string(e0) +
           R"(]},"b":{"dtype":"F32","shape":[1],"data_offsets":[)" + std::to_string(b1) + "," + std::to_string(e1) +
           "]}}";
  };
  write_raw(p, two(0, 4, 4, 8), eight);
  EXPECT_EQ(SafetensorsFile::open(p).tensors().size(), 2u);
  write_raw(p, two(0, 4, 2, 6), std::vector<uint8_t>(6, 0));
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"overlap"});
  write_raw(p, two(0, 4, 8, 12), std::vector<uint8_t>(12, 0));
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"gap"});
  write_raw(p, two(0, 4, 4, 8), std::vector<uint8_t>(10, 0));
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"trailing"});
  write_raw(p, two(0, 4, 4, 9), std::vector<uint8_t>(9, 0));
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"tensor 'b'", "needs 4"});
  write_raw(p, two(0, 4, 8, 4), eight);
  expect_bad_input([&] { SafetensorsFile::open(p); }, {"end before begin"});
}

// ---------------------------------------------------------------- HF directories

namespace {

void check_round_trip(Arch arch) {
  TmpDir d;
  const ModelConfig m = tiny(arch);
  const ParamTable t = build_param_table(m);
  const std::vector<float> p = fill(t);
  save_hf_model(d.str(), m, t, p.data());
  ASSERT_TRUE(fs::exists(d / "config.json"));
  const ModelConfig r = read_hf_config(d.str());
  expect_same_model(m, r);
  const ParamTable t2 = build_param_table(r);
  ASSERT_EQ(t2.total_numel(), t.total_numel());
  std::vector<float> q(p.size(), -99.f);
  load_hf_weights(d.str(), r, t2, q.data());
  EXPECT_EQ(p, q);
  // On disk: per-expert (v4) names, fp32.
  SafetensorsFile f = SafetensorsFile::open(d / "model.safetensors");
  EXPECT_EQ(f.tensors().size(), t.entries().size());
  const std::string w1 = layer_names(m, 0).w1[3];
  ASSERT_NE(f.find(w1), nullptr);
  EXPECT_EQ(f.find(w1)->dtype, "F32");
  EXPECT_EQ(f.find("lm_head.weight") != nullptr, !m.tie_word_embeddings);
  const HfExtras x = read_hf_extras(d.str());
  EXPECT_EQ(x.dtype, "float32");
  EXPECT_EQ(x.router_aux_loss_coef.value_or(-1), 0.001);  // no trained coefficient given: the class default
}

void check_fused(Arch arch) {
  TmpDir d;
  const ModelConfig m = tiny(arch);
  const ParamTable t = build_param_table(m);
  const std::vector<float> p = fill(t);
  save_hf_model(d.str(), m, t, p.data(), HfSaveOptions{StDtype::F32, true});
  SafetensorsFile f = SafetensorsFile::open(d / "model.safetensors");
  const i64 E = m.num_experts, I = m.expert_width(), H = m.hidden_size;
  const TensorEntry* gu = f.find("model.layers.0.mlp.experts.gate_up_proj");
  const TensorEntry* dn = f.find("model.layers.0.mlp.experts.down_proj");
  ASSERT_NE(gu, nullptr);
  ASSERT_NE(dn, nullptr);
  EXPECT_EQ(gu->shape, (std::vector<i64>{E, 2 * I, H}));
  EXPECT_EQ(dn->shape, (std::vector<i64>{E, H, I}));
  EXPECT_NE(f.find("model.layers.0.mlp.gate.weight"), nullptr);
  EXPECT_EQ(f.find(layer_names(m, 0).w1[0]), nullptr);
  // Expert 1: rows 0..I-1 of its slab are w1 (gate), rows I..2I-1 are w3 (up).
  const LayerNames n = layer_names(m, 0);
  std::vector<float> guv = read_f32(*gu), dnv = read_f32(*dn);
  EXPECT_EQ(guv[size_t(1 * 2 * I * H)], p[size_t(t.at(n.w1[1]).offset)]);
  EXPECT_EQ(guv[size_t((1 * 2 * I + I) * H + 5)], p[size_t(t.at(n.w3[1]).offset + 5)]);
  EXPECT_EQ(dnv[size_t(3 * H * I + 7)], p[size_t(t.at(n.w2[3]).offset + 7)]);
  std::vector<float> q(p.size(), -99.f);
  load_hf_weights(d.str(), m, t, q.data());
  EXPECT_EQ(p, q);
}

void check_sharded(Arch arch) {
  TmpDir d;
  const ModelConfig m = tiny(arch);
  const ParamTable t = build_param_table(m);
  const std::vector<float> p = fill(t);
  write_text(d / "config.json", hf_config_json(m));
  std::vector<TensorToWrite> s1, s2;
  json wm = json::object();
  const auto& es = t.entries();
  for (size_t i = 0; i < es.size(); ++i) {
    const bool first = i < es.size() / 2;
    const StDtype dt = first ? StDtype::F32 : StDtype::BF16;
    (first ? s1 : s2).push_back({es[i].name, es[i].shape, p.data() + es[i].offset, dt});
    wm[es[i].name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(d / "model-00001-of-00002.safetensors", s1);
  write_safetensors(d / "model-00002-of-00002.safetensors", s2);
  write_text(d / "model.safetensors.index.json",
             json{{"metadata", {{"total_size", 1234}, {"format", "pt"}}}, {"weight_map", wm}}.dump(2));
  std::vector<float> q(p.size(), -99.f);
  load_hf_weights(d.str(), read_hf_config(d.str()), t, q.data());
  for (size_t i = 0; i < es.size(); ++i)
    for (i64 j = 0; j < es[i].numel; ++j) {
      const float v = p[size_t(es[i].offset + j)];
      const float want = i < es.size() / 2 ? v : bf16_to_f32(f32_to_bf16(v));
      ASSERT_EQ(q[size_t(es[i].offset + j)], want) << es[i].name << "[" << j << "]";
    }
}

}  // namespace

TEST(HfModel, SaveLoadRoundTripMixtral) { check_round_trip(Arch::Mixtral); }
TEST(HfModel, SaveLoadRoundTripQwen3Moe) { check_round_trip(Arch::Qwen3Moe); }
TEST(HfModel, FusedLayoutMatchesPerExpertMixtral) { check_fused(Arch::Mixtral); }
TEST(HfModel, FusedLayoutMatchesPerExpertQwen3Moe) { check_fused(Arch::Qwen3Moe); }
TEST(HfModel, ShardedIndexLoadsMixtral) { check_sharded(Arch::Mixtral); }
TEST(HfModel, ShardedIndexLoadsQwen3Moe) { check_sharded(Arch::Qwen3Moe); }

TEST(HfModel, ShapeMismatchIsBadInput) {
  TmpDir d;
  ModelConfig m = tiny(Arch::Mixtral);
  const ParamTable t = build_param_table(m);
  const std::vector<float> p = fill(t);
  save_hf_model(d.str(), m, t, p.data());
  m.intermediate_size = 20;
  const ParamTable t2 = build_param_table(m);
  std::vector<float> q(size_t(t2.total_numel()));
  expect_bad_input([&] { load_hf_weights(d.str(), m, t2, q.data()); },
                   {"model.layers.0.block_sparse_moe.experts.0.w1.weight", "expected [20, 16]", "has shape [24, 16]"});
  // Fused files are checked too.
  ModelConfig m3 = tiny(Arch::Qwen3Moe);
  const ParamTable t3 = build_param_table(m3);
  save_hf_model(d / "fused", m3, t3, fill(t3).data(), HfSaveOptions{StDtype::F32, true});
  m3.moe_intermediate_size = 6;
  const ParamTable t4 = build_param_table(m3);
  std::vector<float> q4(size_t(t4.total_numel()));
  expect_bad_input([&] { load_hf_weights(d / "fused", m3, t4, q4.data()); },
                   {"gate_up_proj", "expected [4, 12, 16]", "has shape [4, 16, 16]"});
}

TEST(HfModel, MissingTensorIsBadInput) {
  TmpDir d;
  const ModelConfig m = tiny(Arch::Mixtral);
  const ParamTable t = build_param_table(m);
  const std::vector<float> p = fill(t);
  std::vector<TensorToWrite> w;
  for (const ParamInfo& e : t.entries())
    if (e.name.find("layers.1.") == std::string::npos && e.name != "lm_head.weight")
      w.push_back({e.name, e.shape, p.data() + e.offset, StDtype::F32});
  write_safetensors(d / "model.safetensors", w);
  std::vector<float> q(p.size());
  expect_bad_input([&] { load_hf_weights(d.str(), m, t, q.data()); },
                   {"missing", "model.layers.1.input_layernorm.weight", "more", "tie_word_embeddings"});
  expect_bad_input([&] { load_hf_weights(d / "nowhere", m, t, q.data()); }, {"model.safetensors"});
}

TEST(HfModel, TiedEmbeddingsAndExtraTensorsAccepted) {
  TmpDir d;
  ModelConfig m = tiny(Arch::Mixtral);
  m.tie_word_embeddings = true;
  const ParamTable t = build_param_table(m);
  ASSERT_EQ(t.find("lm_head.weight"), nullptr);
  const std::vector<float> p = fill(t);
  std::vector<float> extra(8, 3.f);
  std::vector<TensorToWrite> w;
  for (const ParamInfo& e : t.entries()) w.push_back({e.name, e.shape, p.data() + e.offset, StDtype::F32});
  w.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {8}, extra.data(), StDtype::F32});
  w.push_back({"lm_head.weight", {2, 4}, extra.data(), StDtype::F32});  // ignored: tied
  write_safetensors(d / "model.safetensors", w);
  std::vector<float> q(p.size());
  load_hf_weights(d.str(), m, t, q.data());
  EXPECT_EQ(p, q);
}

TEST(HfModel, ConfigAcceptsBothTransformersSpellings) {
  TmpDir d;
  write_text(d / "config.json", R"({
    "model_type": "mixtral", "dtype": "bfloat16", "vocab_size": 100, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": null,
    "head_dim": null, "num_experts": 6, "num_experts_per_tok": 2, "norm_topk_prob": false,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "rms_norm_eps": 1e-5,
    "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0, "rope_scaling": null})");
  ModelConfig m = read_hf_config(d.str());
  EXPECT_EQ(m.arch, Arch::Mixtral);
  EXPECT_EQ(m.num_experts, 6);
  EXPECT_EQ(m.num_kv_heads, 4);
  EXPECT_EQ(m.head_dim, 0);
  EXPECT_TRUE(m.norm_topk_prob);  // Mixtral always renormalises
  EXPECT_DOUBLE_EQ(m.rope_theta, 5e5);
  EXPECT_FALSE(m.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(m.init_std, 0.02);
  HfExtras x = read_hf_extras(d.str());
  EXPECT_EQ(x.dtype, "bfloat16");
  EXPECT_DOUBLE_EQ(x.router_aux_loss_coef.value(), 0.02);
  EXPECT_DOUBLE_EQ(x.router_jitter_noise.value(), 0.0);

  write_text(d / "config.json", R"({
    "model_type": "qwen3_moe", "torch_dtype": "bfloat16", "vocab_size": 100, "hidden_size": 32,
    "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2,
    "rope_theta": 1000000, "decoder_sparse_step": 2, "tie_word_embeddings": true, "initializer_range": 0.01})");
  m = read_hf_config(d.str());
  EXPECT_EQ(m.arch, Arch::Qwen3Moe);
  EXPECT_FALSE(m.norm_topk_prob);  // Qwen3 class default
  EXPECT_EQ(m.expert_width(), 16);
  EXPECT_EQ(m.head_dim, 16);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(m.rope_theta, 1e6);
  EXPECT_FALSE(m.is_moe_layer(0));
  EXPECT_TRUE(m.is_moe_layer(1));
  EXPECT_TRUE(m.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(m.init_std, 0.01);
  EXPECT_FALSE(read_hf_extras(d.str()).router_aux_loss_coef.has_value());
}

TEST(HfModel, ConfigErrorsNameFileAndKey) {
  TmpDir d;
  const std::string base =
      R"("vocab_size": 100, "intermediate_size": 64, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_local_experts": 4, "num_experts_per_tok": 2)";
  write_text(d / "config.json", R"({"model_type": "llama", "hidden_size": 32, )" + base + "}");
  expect_bad_input([&] { read_hf_config(d.str()); }, {"config.json", "'llama'", "mixtral, qwen3_moe"});
  write_text(d / "config.json", R"({"model_type": "mixtral", )" + base + "}");
  expect_bad_input([&] { read_hf_config(d.str()); }, {"config.json", "'hidden_size'"});
  write_text(d / "config.json", R"({"model_type": "mixtral", "hidden_size": "big", )" + base + "}");
  expect_bad_input([&] { read_hf_config(d.str()); }, {"'hidden_size'", "integer"});
  write_text(d / "config.json", R"({"model_type": "mixtral", "hidden_size": 32, "num_experts_per_tok": 9, )" +
                                    base.substr(0, base.rfind(',')) + "}");
  expect_bad_input([&] { read_hf_config(d.str()); }, {"num_experts_per_tok"});
  write_text(d / "config.json", "{not json");
  expect_bad_input([&] { read_hf_config(d.str()); }, {"config.json", "invalid JSON"});
  expect_bad_input([&] { read_hf_config(d / "none"); }, {"config.json"});
}

TEST(HfModel, Bf16SaveLoadsRoundedValues) {
  TmpDir d;
  const ModelConfig m = tiny(Arch::Qwen3Moe);
  const ParamTable t = build_param_table(m);
  const std::vector<float> p = fill(t);
  save_hf_model(d.str(), m, t, p.data(), HfSaveOptions{StDtype::BF16, false});
  EXPECT_EQ(read_hf_extras(d.str()).dtype, "bfloat16");
  std::vector<float> q(p.size());
  load_hf_weights(d.str(), read_hf_config(d.str()), t, q.data());
  for (size_t i = 0; i < p.size(); ++i) ASSERT_EQ(q[i], bf16_to_f32(f32_to_bf16(p[i]))) << i;
}

// Issue 8 (trust under faults): nesting is bounded before anything recursive runs, brackets inside strings do
// not count, and messages quote at most a few dozen characters of a value.
TEST(Safetensors, DeepOrHugeHeaderValuesAreBadInputWithShortMessages) {
  TmpDir d;
  const std::string deep = "{\"x\":{\"dtype\":\"F32\",\"shape\":" + std::string(60000, '[') + std::string(60000, ']') +
                           ",\"data_offsets\":[0,4]}}";
  write_raw(d / "deep.safetensors", deep, std::vector<uint8_t>(4));
  expect_bad_input([&] { SafetensorsFile::open(d / "deep.safetensors"); }, {"deep.safetensors", "nested deeper than 64"});

  // 100 '[' inside a tensor name are text, not nesting: the file is valid.
  const std::string name(100, '[');
  write_raw(d / "name.safetensors", "{\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            std::vector<uint8_t>(4));
  EXPECT_NE(SafetensorsFile::open(d / "name.safetensors").find(name), nullptr);

  // A 100,000-element shape of strings: the message names the tensor but quotes only a prefix of the shape.
  std::string shape = "[";
  for (int i = 0; i < 100000; ++i) shape += i ? ",\"a\"" : "\"a\"";
  write_raw(d / "wide.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":" + shape + "],\"data_offsets\":[0,4]}}",
            std::vector<uint8_t>(4));
  try {
    SafetensorsFile::open(d / "wide.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput);
    EXPECT_NE(std::string(e.what()).find("tensor 'w'"), std::string::npos) << e.what();
    EXPECT_LT(std::strlen(e.what()), 600u) << e.what();
  }
}

namespace moe {
// A header with hundreds of thousands of entries is read in about linear time: nlohmann's callback parser
// rescans the whole top-level object after each entry (minutes at 300k); the SAX pass does not. The
// duplicate at the very end must still be found.
TEST(Safetensors, ManyEntryHeaderIsLinearAndDuplicatesAreFound) {
  test::TmpDir d;
  const std::string p = d / "many.safetensors";
  std::string h = "{";
  const int n = 300000;
  for (int i = 0; i < n; ++i)
    h += "\"t." + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" + std::to_string(i) + "," +
         std::to_string(i + 1) + "]},";
  h += "\"t.7\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" + std::to_string(n) + "," + std::to_string(n + 1) + "]}}";
  write_raw(p, h, std::vector<uint8_t>(size_t(n) + 1, 0));
  const auto t0 = std::chrono::steady_clock::now();
  test::expect_bad_input([&] { SafetensorsFile::open(p); }, {"'t.7' appears twice"});
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
}
}  // namespace moe
