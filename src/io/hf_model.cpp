// Owns HF model directories: config.json keys, safetensors weights in both expert layouts (docs/DESIGN.md §4).
#include "io/hf_model.h"
#include "peft/lora.h"

#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/tokenizer/tokenizer.h"
#include "io/json_file.h"

namespace moe {

using json = nlohmann::json;
namespace fs = std::filesystem;

void open_weights(const std::string& dir, WeightSource& src) {
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  auto add_all = [&](const SafetensorsFile& f) {
    for (const TensorEntry& t : f.tensors())
      if (src.by_name.emplace(t.name, &t).second) src.file_of[t.name] = &f;
  };
  if (is_regular_file(single)) {
    src.files.push_back(SafetensorsFile::open(single));
    src.desc = single;
    add_all(src.files.back());
    return;
  }
  MT_INPUT_CHECK(is_regular_file(index), "model directory ", dir,
                 ": found neither model.safetensors nor model.safetensors.index.json (only safetensors weights are "
                 "supported)");
  const json j = read_json_file(index);
  MT_INPUT_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
                 ": missing object 'weight_map'");
  std::unordered_map<std::string, const SafetensorsFile*> shard;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    MT_INPUT_CHECK(it.value().is_string(), index, ": weight_map entry '", it.key(), "' is not a file name");
    const std::string sf = it.value().get<std::string>();
    if (!shard.count(sf)) {
      const std::string p = dir + "/" + sf;
      MT_INPUT_CHECK(is_regular_file(p), index, ": shard ", sf, " (holding ", it.key(), ") does not exist in ", dir);
      src.files.push_back(SafetensorsFile::open(p));
      shard[sf] = &src.files.back();
    }
  }
  // The index decides which shard holds a tensor; tensors it does not list are taken from their shard.
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    const SafetensorsFile* f = shard.at(it.value().get<std::string>());
    const TensorEntry* t = f->find(it.key());
    MT_INPUT_CHECK(t != nullptr, index, ": weight_map puts ", it.key(), " in ", f->path(),
                   ", which has no such tensor");
    src.by_name[it.key()] = t;
    src.file_of[it.key()] = f;
  }
  for (const SafetensorsFile& f : src.files) add_all(f);
  src.desc = index + " (" + std::to_string(src.files.size()) + " shards)";
}

namespace {

// Per-expert table entry → (layer, which matrix, expert), to find it in a fused v5 tensor.
struct ExpertRef {
  int layer, which, expert;  // which: 0 = w1/gate, 1 = w3/up, 2 = w2/down
};

// Sliding window and pad_token_id as transformers 5.x reads them. Mixtral: `sliding_window` N (null = none) on every
// layer; Qwen3-MoE: `sliding_window` (class default 4096; null = none) only when `use_sliding_window`, then on every
// layer (its model does not read max_window_layers). Both mask with create_sliding_window_causal_mask: query i sees
// keys j with i−N < j ≤ i. A `layer_types` list is not read by either model; it must agree with that.
void read_hf_attention_keys(const JsonKeys& k, ModelConfig& m) {
  const bool mix = m.arch == Arch::Mixtral;
  const bool use_window = mix || k.get_bool("use_sliding_window", false);
  if (use_window) {
    if (k.has("sliding_window"))
      m.sliding_window = k.get_int("sliding_window", true);
    else if (!mix && !k.j.contains("sliding_window"))
      m.sliding_window = 4096;  // Qwen3MoeConfig default, used when use_sliding_window is true
  }
  if (!mix && m.sliding_window > 0 && k.get_int("max_window_layers", m.num_layers, false) < m.num_layers)
    spdlog::warn("{}: max_window_layers = {} < num_hidden_layers = {}: transformers' Qwen3-MoE ignores it and "
                 "applies the sliding window {} to every layer; so does moe-train",
                 k.file, json_brief(k.j["max_window_layers"]), m.num_layers, m.sliding_window);
  if (k.has("layer_types")) {
    const json& lt = k.j["layer_types"];
    MT_INPUT_CHECK(lt.is_array(), k.file, ": key 'layer_types' must be a list, got ", json_brief(lt));
    const char* want = m.sliding_window > 0 ? "sliding_attention" : "full_attention";
    for (size_t i = 0; i < lt.size(); ++i)
      MT_INPUT_CHECK(lt[i] == want, k.file, ": layer_types[", i, "] = ", json_brief(lt[i]), " is not supported: ",
                     mix ? "Mixtral" : "Qwen3-MoE", " applies ", want, " to every layer (",
                     m.sliding_window > 0 ? "sliding_window " + std::to_string(m.sliding_window)
                                          : std::string("no sliding window"),
                     ") and transformers does not read layer_types; allowed: \"", want, "\" for every layer");
  }
  if (k.has("pad_token_id")) {
    // nn.Embedding(vocab, hidden, padding_idx): a negative index counts from the end, as in torch.
    MT_INPUT_CHECK(k.j["pad_token_id"].is_number_integer(), k.file, ": key 'pad_token_id' must be an integer, got ",
                   json_brief(k.j["pad_token_id"]));
    const long long p = k.j["pad_token_id"].get<long long>();
    MT_INPUT_CHECK(p >= -m.vocab_size && p < m.vocab_size, k.file, ": pad_token_id = ", p,
                   " is outside the vocabulary (vocab_size = ", m.vocab_size, ")");
    m.pad_token_id = int(p < 0 ? p + m.vocab_size : p);
  }
}

// Keys transformers reads that would change the forward or backward math of these two classes and that moe-train
// does not implement: each one refused with its value and the fix. (Handled elsewhere: hidden sizes and counts,
// head_dim, rope_theta / rope_parameters / rope_scaling, rms_norm_eps, tie_word_embeddings, sliding_window,
// use_sliding_window, norm_topk_prob, mlp_only_layers, decoder_sparse_step, pad_token_id. No effect on the math
// of a loaded model: initializer_range, use_cache, bos/eos_token_id, max_position_embeddings (plain RoPE),
// max_window_layers, output_router_logits and router_aux_loss_coef (the objective is set by moe.*), dtype.)
void check_hf_math_keys(const JsonKeys& k, const ModelConfig& m) {
  const json& j = k.j;
  const bool mix = m.arch == Arch::Mixtral;
  if (k.has("hidden_act"))
    MT_INPUT_CHECK(j["hidden_act"] == "silu", k.file, ": hidden_act ", json_brief(j["hidden_act"]),
                   " is not supported; allowed: \"silu\"");
  MT_INPUT_CHECK(!k.get_bool("attention_bias", false), k.file,
                 ": attention_bias true is not supported (moe-train attention has no biases); allowed: false");
  const double drop = k.get_num("attention_dropout", 0.0);
  MT_INPUT_CHECK(drop == 0.0, k.file, ": attention_dropout = ", drop,
                 " is not supported (transformers drops attention probabilities in training; moe-train has no "
                 "attention dropout); allowed: 0.0");
  if (mix) {
    const double jit = k.get_num("router_jitter_noise", 0.0);
    MT_INPUT_CHECK(jit == 0.0, k.file, ": router_jitter_noise = ", jit,
                   " is not supported (transformers' Mixtral multiplies the MoE block input, experts included, by "
                   "U(1-e, 1+e)); allowed: 0.0 — set it to 0.0 and use moe.router_jitter, which jitters the router "
                   "input only");
  }
  MT_INPUT_CHECK(k.get_bool("is_causal", true), k.file,
                 ": is_causal false (bidirectional attention) is not supported; allowed: true");
  MT_INPUT_CHECK(!k.has("quantization_config"), k.file, ": quantization_config ", k.has("quantization_config") ?
                 json_brief(j["quantization_config"]) : std::string(), " is not supported (quantized weights); allowed: "
                 "no quantization_config — dequantize the model to bf16/fp32 first");
}

// transformers 5.x ties lm_head to the embeddings only when the file's lm_head.weight (if any) equals them; with
// different values it keeps both ("will NOT tie them"). Do the same, and say so.
void untie_differing_lm_head(const std::string& dir, ModelConfig& m) {
  if (!m.tie_word_embeddings) return;
  if (!is_regular_file(dir + "/model.safetensors") && !is_regular_file(dir + "/model.safetensors.index.json"))
    return;  // no weights next to config.json (load_hf_weights reports that)
  WeightSource src;
  open_weights(dir, src);
  const TensorEntry* lm = src.find("lm_head.weight");
  const TensorEntry* emb = src.find("model.embed_tokens.weight");
  if (!lm || !emb) return;
  const std::string where = src.file_of.at("lm_head.weight")->path();
  if (lm->shape != emb->shape || !convertible_to_f32(lm->dtype) || !convertible_to_f32(emb->dtype)) {
    spdlog::warn("{}: tensor lm_head.weight {} is ignored: config.json ties the output layer to "
                 "model.embed_tokens.weight {}, which is used",
                 where, shape_str(lm->shape), shape_str(emb->shape));
    return;
  }
  bool same = lm->dtype == emb->dtype && lm->nbytes == emb->nbytes &&
              std::memcmp(lm->data, emb->data, lm->nbytes) == 0;
  if (!same) {
    std::vector<float> a(size_t(lm->numel())), b(a.size());
    convert_to_f32(*lm, a.data());
    convert_to_f32(*emb, b.data());
    same = a == b;
  }
  if (same) return;
  m.tie_word_embeddings = false;
  spdlog::warn("{}: tensor lm_head.weight differs from model.embed_tokens.weight although config.json sets "
               "tie_word_embeddings true; as transformers does, they are not tied: lm_head.weight is used as the "
               "output layer and trained separately (exports write tie_word_embeddings false)",
               where);
}

}  // namespace

// ---------------------------------------------------------------- config.json

ModelConfig read_hf_config(const std::string& dir) {
  const std::string file = dir + "/config.json";
  MT_INPUT_CHECK(is_regular_file(file), "model directory ", dir, ": no config.json");
  const json j = read_json_file(file);
  MT_INPUT_CHECK(j.is_object(), file, ": not a JSON object");
  JsonKeys k{j, file};
  MT_INPUT_CHECK(k.has("model_type") && j["model_type"].is_string(), file, ": missing required key 'model_type'");
  const std::string mt = j["model_type"].get<std::string>();
  ModelConfig m;
  if (mt == "mixtral") {
    m.arch = Arch::Mixtral;
  } else if (mt == "qwen3_moe") {
    m.arch = Arch::Qwen3Moe;
  } else {
    MT_INPUT_FAIL(file, ": model_type '", brief_text(mt), "' is not supported; allowed: mixtral, qwen3_moe");
  }
  const bool mix = m.arch == Arch::Mixtral;
  m.vocab_size = k.get_int("vocab_size");
  m.hidden_size = k.get_int("hidden_size");
  m.intermediate_size = k.get_int("intermediate_size");
  m.moe_intermediate_size = mix ? 0 : k.get_int("moe_intermediate_size");
  m.num_layers = k.get_int("num_hidden_layers");
  m.num_heads = k.get_int("num_attention_heads");
  m.num_kv_heads = k.get_int("num_key_value_heads", m.num_heads, true);  // HF: None → num_attention_heads
  m.head_dim = k.get_int("head_dim", 0, true);
  const char* ek = mix ? (k.has("num_local_experts") ? "num_local_experts" : "num_experts")
                       : (k.has("num_experts") ? "num_experts" : "num_local_experts");
  MT_INPUT_CHECK(k.has(ek), file, ": missing required key '", mix ? "num_local_experts" : "num_experts", "'");
  m.num_experts = k.get_int(ek);
  m.top_k = k.get_int("num_experts_per_tok");
  MT_INPUT_CHECK(m.top_k <= m.num_experts, file, ": num_experts_per_tok = ", m.top_k, " exceeds ", ek, " = ",
                 m.num_experts);
  MT_INPUT_CHECK(m.num_heads % m.num_kv_heads == 0, file, ": num_attention_heads = ", m.num_heads,
                 " is not a multiple of num_key_value_heads = ", m.num_kv_heads);
  MT_INPUT_CHECK(m.head_dim > 0 || m.hidden_size % m.num_heads == 0, file, ": hidden_size = ", m.hidden_size,
                 " is not a multiple of num_attention_heads = ", m.num_heads, " and head_dim is not given");
  // Mixtral always renormalises top-k (its config has no such key); Qwen3's class default is false.
  m.norm_topk_prob = mix ? true : k.get_bool("norm_topk_prob", false);

  m.rope_theta = hf_rope_theta(k, mix ? 1e6 : 1e4);  // class default_theta: MixtralConfig 1e6, Qwen3MoeConfig 1e4
  m.rms_norm_eps = k.get_num("rms_norm_eps", mix ? 1e-5 : 1e-6);  // class defaults
  MT_INPUT_CHECK(m.rms_norm_eps > 0, file, ": rms_norm_eps must be > 0, got ", m.rms_norm_eps);
  m.tie_word_embeddings = k.get_bool("tie_word_embeddings", false);
  m.init_std = k.get_num("initializer_range", 0.02);
  // Qwen3-MoE only: MixtralForCausalLM uses the MoE block in every layer whatever these keys say.
  if (!mix && k.has("mlp_only_layers")) {
    const json& a = j["mlp_only_layers"];
    MT_INPUT_CHECK(a.is_array(), file, ": key 'mlp_only_layers' must be a list of layer indices, got ", json_brief(a));
    for (const json& x : a) {
      MT_INPUT_CHECK(x.is_number_integer() && x.get<long long>() >= 0 && x.get<long long>() < (1ll << 31), file,
                     ": mlp_only_layers holds ", json_brief(x), ", not a layer index");
      m.mlp_only_layers.push_back(x.get<int>());
    }
  }
  if (!mix) m.decoder_sparse_step = k.get_int("decoder_sparse_step", 1, true);
  read_hf_attention_keys(k, m);
  check_hf_math_keys(k, m);
  check_model_dims(m, file, ModelKeys::HfConfig);
  untie_differing_lm_head(dir, m);
  return m;
}

HfExtras read_hf_extras(const std::string& dir) {
  const std::string file = dir + "/config.json";
  const json j = read_json_file(file);
  MT_INPUT_CHECK(j.is_object(), file, ": not a JSON object");
  JsonKeys k{j, file};
  HfExtras x;
  if (k.has("model_type") && j["model_type"].is_string()) x.model_type = j["model_type"].get<std::string>();
  for (const char* dk : {"dtype", "torch_dtype"})
    if (x.dtype.empty() && k.has(dk) && j[dk].is_string()) x.dtype = j[dk].get<std::string>();
  if (k.has("router_aux_loss_coef")) x.router_aux_loss_coef = k.get_num("router_aux_loss_coef", 0.0);
  if (k.has("router_jitter_noise")) x.router_jitter_noise = k.get_num("router_jitter_noise", 0.0);
  if (k.has("output_router_logits")) x.output_router_logits = k.get_bool("output_router_logits", false);
  return x;
}

const char* const kHfSideFiles[] = {"generation_config.json", "tokenizer.json",   "tokenizer_config.json",
                                    "special_tokens_map.json", "tokenizer.model",  "vocab.json",
                                    "merges.txt",             "vocab.txt",        "added_tokens.json",
                                    "chat_template.jinja",    "chat_template.json", nullptr};

std::string hf_config_json(const ModelConfig& m, StDtype dtype, const HfExportMeta& meta) {
  const bool mix = m.arch == Arch::Mixtral;
  using ojson = nlohmann::ordered_json;
  ojson j = ojson::object();
  const std::string src_file = meta.source_dir + "/config.json";
  if (meta.source != HfMetaSource::None) {
    std::ifstream in(src_file);
    MT_INPUT_CHECK(in.good(), "cannot read ", src_file, " (the source of the exported config.json's metadata)");
    (void)read_json_file(src_file);  // size, nesting depth and syntax checked first, with short messages
    ojson s;
    try {
      s = ojson::parse(in);
    } catch (const ojson::exception& e) {
      MT_INPUT_FAIL(src_file, ": invalid JSON (", e.what(), ")");
    }
    MT_INPUT_CHECK(s.is_object(), src_file, ": not a JSON object");
    if (meta.source == HfMetaSource::MoeModel) {
      j = s;  // every key kept; the architecture keys are rewritten below
    } else {
      for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"})
        if (s.contains(key)) j[key] = s[key];
    }
  }
  auto keep_or = [&](const char* key, const ojson& dflt) {
    if (!j.contains(key)) j[key] = dflt;
  };
  // Identity and architecture: always ours.
  j["architectures"] = {mix ? "MixtralForCausalLM" : "Qwen3MoeForCausalLM"};
  j["model_type"] = mix ? "mixtral" : "qwen3_moe";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.intermediate_size;
  if (!mix) j["moe_intermediate_size"] = m.expert_width();
  j["num_hidden_layers"] = m.num_layers;
  j["num_attention_heads"] = m.num_heads;
  j["num_key_value_heads"] = m.num_kv_heads;
  j["head_dim"] = m.resolved_head_dim();
  j.erase(mix ? "num_experts" : "num_local_experts");
  j[mix ? "num_local_experts" : "num_experts"] = m.num_experts;
  j["num_experts_per_tok"] = m.top_k;
  if (!mix) j["norm_topk_prob"] = m.norm_topk_prob;
  j["rope_theta"] = m.rope_theta;
  for (const char* rk : {"rope_parameters", "rope_scaling"})  // plain RoPE only (the reader refuses the rest)
    if (j.contains(rk) && j[rk].is_object() && !j[rk].empty()) j[rk]["rope_theta"] = m.rope_theta;
  j["rms_norm_eps"] = m.rms_norm_eps;
  j["tie_word_embeddings"] = m.tie_word_embeddings;
  j["initializer_range"] = m.init_std;
  j["dtype"] = dtype == StDtype::F32 ? "float32" : "bfloat16";  // v5 spelling
  j["torch_dtype"] = j["dtype"];                                   // v4 spelling
  if (meta.router_aux_loss_coef) j["router_aux_loss_coef"] = *meta.router_aux_loss_coef;
  keep_or("router_aux_loss_coef", 0.001);  // class default of both
  if (mix) j["router_jitter_noise"] = 0.0;
  keep_or("output_router_logits", false);
  j["hidden_act"] = "silu";
  j["attention_dropout"] = 0.0;
  // Sliding window: Mixtral reads sliding_window (null = none); Qwen3-MoE only when use_sliding_window.
  if (mix) {
    j["sliding_window"] = m.sliding_window > 0 ? ojson(m.sliding_window) : ojson(nullptr);
  } else {
    j["use_sliding_window"] = m.sliding_window > 0;
    if (m.sliding_window > 0) j["sliding_window"] = m.sliding_window;
    keep_or("sliding_window", nullptr);
    keep_or("max_window_layers", m.num_layers);
    j["attention_bias"] = false;
    j["mlp_only_layers"] = m.mlp_only_layers;
    j["decoder_sparse_step"] = m.decoder_sparse_step;
  }
  // Metadata: the tokenizer's BOS/EOS (data.tokenizer), the source's, else the class defaults (MixtralConfig /
  // Qwen3MoeConfig).
  if (!meta.tokenizer_dir.empty()) {
    const Tokenizer tok = Tokenizer::from_dir(meta.tokenizer_dir);  // no BOS (or EOS) there: null here
    j["bos_token_id"] = tok.bos_id() ? ojson(*tok.bos_id()) : ojson(nullptr);
    j["eos_token_id"] = tok.eos_id() ? ojson(*tok.eos_id()) : ojson(nullptr);
  }
  keep_or("max_position_embeddings", mix ? 131072 : 32768);
  keep_or("bos_token_id", mix ? ojson(1) : ojson(nullptr));
  keep_or("eos_token_id", mix ? ojson(2) : ojson(nullptr));
  keep_or("pad_token_id", m.pad_token_id >= 0 ? ojson(m.pad_token_id) : ojson(nullptr));
  keep_or("use_cache", true);
  return j.dump(2) + "\n";
}

namespace {

void write_through_tmp(const std::string& to, const std::string& text) {
  const std::string tmp = to + ".tmp";
  std::ofstream out(tmp);
  out << text;
  out.close();
  MT_INPUT_CHECK(out.good(), "cannot write ", tmp);
  MT_INPUT_CHECK(std::rename(tmp.c_str(), to.c_str()) == 0, "cannot rename ", tmp, " to ", to);
}

// Copies the side files of meta.source_dir that exist into dir (byte for byte, through a temporary); with
// meta.tokenizer_dir its tokenizer files instead, and generation_config.json with the tokenizer's BOS/EOS.
void copy_side_files(const HfExportMeta& meta, const std::string& dir) {
  const bool tok = !meta.tokenizer_dir.empty();
  for (const char* const* f = kHfSideFiles; *f; ++f) {
    const bool gen = std::string(*f) == "generation_config.json";
    const std::string src = tok && !gen ? meta.tokenizer_dir : meta.source != HfMetaSource::None ? meta.source_dir : "";
    const std::string from = src + "/" + *f, to = dir + "/" + *f, tmp = to + ".tmp";
    if (src.empty() || !is_regular_file(from)) continue;
    std::error_code ec;
    fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
    MT_INPUT_CHECK(!ec, "cannot copy ", from, " to ", tmp, ": ", ec.message());
    MT_INPUT_CHECK(std::rename(tmp.c_str(), to.c_str()) == 0, "cannot rename ", tmp, " to ", to);
  }
  if (!tok) return;
  // generation_config.json consistent with the tokenizer: the source's keys (sampling settings) kept, ids set.
  const Tokenizer t = Tokenizer::from_dir(meta.tokenizer_dir);
  const std::string gen = dir + "/generation_config.json";
  nlohmann::ordered_json g = nlohmann::ordered_json::object();
  if (is_regular_file(gen)) {
    (void)read_json_file(gen);
    std::ifstream in(gen);
    try {
      g = nlohmann::ordered_json::parse(in);
    } catch (const std::exception& e) {
      MT_INPUT_FAIL(gen, ": invalid JSON (", e.what(), ")");
    }
    MT_INPUT_CHECK(g.is_object(), gen, ": not a JSON object");
  }
  g["bos_token_id"] = t.bos_id() ? nlohmann::ordered_json(*t.bos_id()) : nlohmann::ordered_json(nullptr);
  g["eos_token_id"] = t.eos_id() ? nlohmann::ordered_json(*t.eos_id()) : nlohmann::ordered_json(nullptr);
  write_through_tmp(gen, g.dump(2) + "\n");
}

}  // namespace

// ---------------------------------------------------------------- weights

HfWeightReader::HfWeightReader(const std::string& dir, const ModelConfig& m, const ParamTable& table)
    : table_(table) {
  WeightSource& src = src_;
  open_weights(dir, src);
  copies_.resize(table.units().size());
  const bool mix = m.arch == Arch::Mixtral;
  const i64 E = m.num_experts, I = m.expert_width(), H = m.hidden_size;

  std::unordered_map<std::string, ExpertRef> experts;
  for (int l = 0; l < m.num_layers; ++l) {
    if (!m.is_moe_layer(l)) continue;
    const LayerNames n = layer_names(m, l);
    for (int e = 0; e < m.num_experts; ++e) {
      experts[n.w1[e]] = {l, 0, e};
      experts[n.w3[e]] = {l, 1, e};
      experts[n.w2[e]] = {l, 2, e};
    }
  }
  // A fused tensor of layer l: "gate_up_proj" or "down_proj", with or without ".weight", under "mlp."
  // (v5; also "block_sparse_moe." for Mixtral). Shape-checked; nullptr when absent.
  auto find_fused = [&](int l, const char* what, const std::vector<i64>& want) -> const TensorEntry* {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* blk : {"mlp.", "block_sparse_moe."}) {
      if (!mix && std::string(blk) != "mlp.") continue;
      for (const char* suf : {"", ".weight"}) {
        const std::string nm = p + blk + "experts." + what + suf;
        if (const TensorEntry* t = src.find(nm)) {
          MT_INPUT_CHECK(t->shape == want, src.file_of.at(nm)->path(), ": tensor ", nm, " has shape ",
                         shape_str(t->shape), ", expected ", shape_str(want), " (from config.json)");
          return t;
        }
      }
    }
    return nullptr;
  };

  std::vector<std::string> missing;
  const ParamInfo* cur = nullptr;
  auto add = [&](const TensorEntry& t, i64 offset) {
    MT_INPUT_CHECK(convertible_to_f32(t.dtype), src.file_of.at(t.name)->path(), ": tensor ", t.name, " has dtype ",
                   t.dtype, "; allowed: F32, BF16, F16, F64");
    copies_[size_t(cur->unit)].push_back({t, offset, &cur->name});
  };
  for (const ParamInfo& p : table.entries()) {
    if (is_lora_name(p.name)) continue;  // LoRA adapters: initialised or imported by the caller
    cur = &p;
    const i64 dst = p.offset;
    const TensorEntry* t = src.find(p.name);
    std::string found_as = p.name;
    if (!t && mix && p.name.find(".block_sparse_moe.") != std::string::npos) {  // v5 renames the block "mlp"
      found_as = p.name;
      found_as.replace(found_as.find(".block_sparse_moe."), 18, ".mlp.");
      t = src.find(found_as);
    }
    if (t) {
      MT_INPUT_CHECK(t->shape == p.shape, src.file_of.at(found_as)->path(), ": tensor ", found_as, " has shape ",
                     shape_str(t->shape), ", expected ", shape_str(p.shape), " (from config.json)");
      add(*t, dst);
      continue;
    }
    auto ex = experts.find(p.name);
    if (ex != experts.end()) {
      const ExpertRef r = ex->second;
      if (r.which < 2) {
        if (const TensorEntry* f = find_fused(r.layer, "gate_up_proj", {E, 2 * I, H})) {
          add(slice_elements(*f, (r.expert * 2 * I + r.which * I) * H, I * H), dst);  // gate rows, then up rows
          continue;
        }
      } else if (const TensorEntry* f = find_fused(r.layer, "down_proj", {E, H, I})) {
        add(slice_elements(*f, r.expert * H * I, H * I), dst);
        continue;
      }
    }
    missing.push_back(p.name);
  }
  if (!missing.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) os << (i ? ", " : "") << missing[i];
    if (missing.size() > 5) os << ", ... (" << missing.size() - 5 << " more)";
    const bool lm = table.find("lm_head.weight") && !src.find("lm_head.weight");
    MT_INPUT_FAIL(src.desc, ": ", missing.size(), " tensor(s) the model needs are missing: ", os.str(),
                  lm ? "; lm_head.weight is absent: if the model ties it to the embeddings, config.json needs "
                       "tie_word_embeddings: true"
                     : "");
  }
}

void HfWeightReader::read_unit(int unit, float* dst) const {
  MT_CHECK(unit >= 0 && size_t(unit) < copies_.size(), "HfWeightReader: unit ", unit, " out of range");
  const WeightSource& src = src_;
  const std::vector<Copy>& copies = copies_[size_t(unit)];
  const i64 begin = table_.units()[size_t(unit)].begin;  // dst[0] is table element `begin`
  std::vector<i64> bad(copies.size(), -1);  // first non-finite element of each copy
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < long(copies.size()); ++i) {
    const Copy& c = copies[size_t(i)];
    float* out = dst + (c.offset - begin);
    convert_to_f32(c.src, out);
    bad[size_t(i)] = first_non_finite(out, c.src.numel());
  }
  for (size_t i = 0; i < copies.size(); ++i) {
    if (bad[i] < 0) continue;
    const Copy& c = copies[i];
    const i64 n = c.src.numel(), at = bad[i];
    i64 count = 0;
    const float* out = dst + (c.offset - begin);
    for (i64 e = 0; e < n; ++e) count += std::isfinite(out[e]) ? 0 : 1;
    MT_INPUT_FAIL(src.file_of.at(c.src.name)->path(), ": tensor ", c.src.name,
                  c.src.name == *c.param ? std::string() : " (part for " + *c.param + ")", " holds ", count,
                  " non-finite value(s) (first at flat index ", at, ": ", out[at],
                  "); training would carry them into the weights — fix or re-export the model");
  }
}

void load_hf_weights(const std::string& dir, const ModelConfig& m, const ParamTable& table, float* params) {
  const HfWeightReader reader(dir, m, table);
  for (const ParamUnit& u : table.units()) reader.read_unit(int(&u - table.units().data()), params + u.begin);
}

// The weight files an earlier export may have left in dir (model.safetensors, model-NNNNN-of-NNNNN.safetensors and
// the index): a loader would read a stale single file beside new shards, or stale shards through an old index.
// Nothing else in dir is touched.
static void remove_stale_weights(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    const bool shard = n.rfind("model-", 0) == 0 && n.find("-of-") != std::string::npos && n.size() > 12 &&
                       n.compare(n.size() - 12, 12, ".safetensors") == 0;
    if (n == "model.safetensors" || n == "model.safetensors.index.json" || shard) {
      std::error_code rm;
      fs::remove(e.path(), rm);
      MT_INPUT_CHECK(!rm, "cannot remove the earlier export's ", e.path().string(), ": ", rm.message());
    }
  }
  MT_INPUT_CHECK(!ec, "cannot list model directory ", dir, ": ", ec.message());
}

void save_hf_model(const std::string& dir, const ModelConfig& m, const ParamTable& table, const float* params,
                   const HfSaveOptions& opt) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MT_INPUT_CHECK(!ec && fs::is_directory(dir), "cannot create model directory ", dir, ": ", ec.message());
  remove_stale_weights(dir);

  const std::string cfg = dir + "/config.json", tmp = cfg + ".tmp";
  {
    std::ofstream out(tmp);
    out << hf_config_json(m, opt.dtype, opt.meta);
    out.close();
    MT_INPUT_CHECK(out.good(), "cannot write ", tmp);
  }
  MT_INPUT_CHECK(std::rename(tmp.c_str(), cfg.c_str()) == 0, "cannot rename ", tmp, " to ", cfg);
  copy_side_files(opt.meta, dir);

  std::vector<TensorToWrite> out;
  std::deque<std::vector<float>> fused;  // owns the stacked expert tensors until written
  std::unordered_map<std::string, bool> skip;
  const i64 E = m.num_experts, I = m.expert_width(), H = m.hidden_size;
  if (opt.fused_experts) {
    for (int l = 0; l < m.num_layers; ++l) {
      if (!m.is_moe_layer(l)) continue;
      const LayerNames n = layer_names(m, l);
      const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
      std::vector<float>& gu = fused.emplace_back(size_t(E * 2 * I * H));  // [E, 2I, H]: gate rows, then up rows
      std::vector<float>& dn = fused.emplace_back(size_t(E * H * I));      // [E, H, I]
      for (int e = 0; e < E; ++e) {
        const float* w1 = params + table.at(n.w1[e]).offset;
        const float* w3 = params + table.at(n.w3[e]).offset;
        const float* w2 = params + table.at(n.w2[e]).offset;
        std::copy(w1, w1 + I * H, gu.begin() + e * 2 * I * H);
        std::copy(w3, w3 + I * H, gu.begin() + (e * 2 + 1) * I * H);
        std::copy(w2, w2 + H * I, dn.begin() + e * H * I);
        skip[n.w1[e]] = skip[n.w3[e]] = skip[n.w2[e]] = true;
      }
      out.push_back({p + "experts.gate_up_proj", {E, 2 * I, H}, gu.data(), opt.dtype});
      out.push_back({p + "experts.down_proj", {E, H, I}, dn.data(), opt.dtype});
      const ParamInfo& router = table.at(n.router);
      out.push_back({p + "gate.weight", router.shape, params + router.offset, opt.dtype});
      skip[n.router] = true;
    }
  }
  for (const ParamInfo& p : table.entries())
    if (!skip.count(p.name)) out.push_back({p.name, p.shape, params + p.offset, opt.dtype});
  const i64 esize = opt.dtype == StDtype::F32 ? 4 : 2;
  auto bytes_of = [&](const TensorToWrite& t) {
    i64 n = esize;
    for (i64 d : t.shape) n *= d;
    return n;
  };
  i64 total = 0;
  for (const auto& t : out) total += bytes_of(t);
  if (opt.max_shard_bytes <= 0 || total <= opt.max_shard_bytes) {
    write_safetensors(dir + "/model.safetensors", out);
    return;
  }
  // Greedy shards in table order, each at most max_shard_bytes (a larger tensor gets a shard of its own).
  std::vector<std::vector<TensorToWrite>> shards(1);
  i64 cur = 0;
  for (const auto& t : out) {
    const i64 b = bytes_of(t);
    if (cur > 0 && cur + b > opt.max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(t);
    cur += b;
  }
  nlohmann::json index;
  index["metadata"]["total_size"] = total;
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors(dir + "/" + name, shards[i]);
    for (const auto& t : shards[i]) index["weight_map"][t.name] = name;
  }
  const std::string ip = dir + "/model.safetensors.index.json";
  std::ofstream f(ip + ".tmp");
  f << index.dump(2) << "\n";
  f.close();
  MT_INPUT_CHECK(f.good() && std::rename((ip + ".tmp").c_str(), ip.c_str()) == 0, "cannot write ", ip);
}

}  // namespace moe
