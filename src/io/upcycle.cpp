// Owns upcycling a dense HF model into a Mixtral/Qwen3-MoE model: config mapping, expert copies + noise, fresh router, DUS.
#include "io/upcycle.h"
#include "peft/lora.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "io/hf_model.h"
#include "io/json_file.h"
#include "core/rng.h"
#include "io/safetensors.h"

namespace moe {

using json = nlohmann::json;

namespace {

constexpr const char* kAllowed = "llama, mistral (→ mixtral), qwen3 (→ qwen3_moe)";

// How a tensor of the MoE model is made.
struct Recipe {
  std::string source;  // dense tensor name; "" = fresh router
  bool expert = false; // gets the additive noise
};

}  // namespace

// ---------------------------------------------------------------- config

std::vector<int> dus_source_layers(int L, double depth_pct) {
  MT_INPUT_CHECK(depth_pct >= 0 && depth_pct <= 100, "upcycle.depth_pct must be in [0, 100], got ", depth_pct);
  const int D = int(std::floor(depth_pct / 100.0 * L + 0.5));
  std::vector<int> copies(size_t(L), 0);
  for (int i = 0; i < D; ++i) copies[size_t((i64(i) + 1) * L / (D + 1))] += 1;  // distinct: D ≤ L
  std::vector<int> src;
  src.reserve(size_t(L + D));
  for (int s = 0; s < L; ++s)
    for (int c = 0; c <= copies[size_t(s)]; ++c) src.push_back(s);
  return src;
}

ModelConfig upcycled_config(const UpcycleConfig& u, double init_std) {
  MT_INPUT_CHECK(!u.from.empty(), "upcycle.from is empty: set it to a dense HF model directory");
  const std::string file = u.from + "/config.json";
  MT_INPUT_CHECK(is_regular_file(file), "upcycle.from: '", u.from, "' has no config.json (expected a dense HF model dir)");
  MT_INPUT_CHECK(u.num_experts >= 1, "upcycle.num_experts must be >= 1, got ", u.num_experts);
  MT_INPUT_CHECK(u.top_k >= 1 && u.top_k <= u.num_experts, "upcycle.top_k must be in [1, upcycle.num_experts = ",
                 u.num_experts, "], got ", u.top_k);
  MT_INPUT_CHECK(u.noise >= 0, "upcycle.noise must be >= 0, got ", u.noise);
  const json j = read_json_file(file);
  MT_INPUT_CHECK(j.is_object(), file, ": not a JSON object");
  JsonKeys k{j, file};
  MT_INPUT_CHECK(k.has("model_type") && j["model_type"].is_string(), file,
                 ": missing required key 'model_type' (upcycle.from needs a dense model; allowed: ", kAllowed, ")");
  const std::string mt = j["model_type"].get<std::string>();
  ModelConfig m;
  if (mt == "llama" || mt == "mistral") {
    m.arch = Arch::Mixtral;
  } else if (mt == "qwen3") {
    m.arch = Arch::Qwen3Moe;
  } else {
    MT_INPUT_FAIL(file, ": model_type '", brief_text(mt), "' cannot be upcycled (upcycle.from); allowed: ", kAllowed,
                  (mt == "mixtral" || mt == "qwen3_moe") ? " — this is already an MoE model: use model.init_from" : "");
  }

  // Only what the MoE architectures compute identically is accepted. [C4.layer] [C4.attention]
  if (k.has("hidden_act"))
    MT_INPUT_CHECK(j["hidden_act"] == "silu", file, ": hidden_act ", json_brief(j["hidden_act"]),
                   " is not supported for upcycling; allowed: \"silu\"");
  MT_INPUT_CHECK(!k.get_bool("attention_bias", false), file,
                 ": attention_bias true is not supported for upcycling (the MoE attention has no biases); allowed: false");
  MT_INPUT_CHECK(!k.get_bool("mlp_bias", false), file,
                 ": mlp_bias true is not supported for upcycling (experts have no biases); allowed: false");
  m.rope_theta = hf_rope_theta(k, 10000.0);  // llama / mistral / qwen3 class default
  // Upcycling keeps full causal attention (the dense model's window is not carried over).
  if (mt == "mistral")
    MT_INPUT_CHECK(!k.has("sliding_window"), file, ": sliding_window ", json_brief(j["sliding_window"]),
                   " is not supported for upcycling (the upcycled model keeps full causal attention); allowed: "
                   "null — set it to null if train.seq_len never exceeds the window");
  if (mt == "qwen3") {
    MT_INPUT_CHECK(!k.get_bool("use_sliding_window", false), file,
                   ": use_sliding_window true is not supported for upcycling (the upcycled model keeps full causal "
                   "attention); allowed: false");
  }
  if (k.has("layer_types") && j["layer_types"].is_array())
    for (const json& t : j["layer_types"])
      MT_INPUT_CHECK(t == "full_attention", file, ": layer_types holds ", json_brief(t),
                     "; only \"full_attention\" layers can be upcycled");

  m.vocab_size = k.get_int("vocab_size");
  m.hidden_size = k.get_int("hidden_size");
  m.intermediate_size = k.get_int("intermediate_size");
  const int dense_layers = k.get_int("num_hidden_layers");
  m.num_heads = k.get_int("num_attention_heads");
  m.num_kv_heads = k.get_int("num_key_value_heads", m.num_heads, true);  // HF: None → num_attention_heads
  m.head_dim = k.get_int("head_dim", 0, true);
  MT_INPUT_CHECK(m.num_heads % m.num_kv_heads == 0, file, ": num_attention_heads = ", m.num_heads,
                 " is not a multiple of num_key_value_heads = ", m.num_kv_heads);
  MT_INPUT_CHECK(m.head_dim > 0 || m.hidden_size % m.num_heads == 0, file, ": hidden_size = ", m.hidden_size,
                 " is not a multiple of num_attention_heads = ", m.num_heads, " and head_dim is not given");
  m.rms_norm_eps = k.get_num("rms_norm_eps", 1e-6);  // class default of all three
  MT_INPUT_CHECK(m.rms_norm_eps > 0, file, ": rms_norm_eps must be > 0, got ", m.rms_norm_eps);
  m.tie_word_embeddings = k.get_bool("tie_word_embeddings", false);

  // MoE shape: every layer sparse, experts as wide as the dense MLP, renormalised top-k.
  m.num_experts = u.num_experts;
  m.top_k = u.top_k;
  m.norm_topk_prob = true;
  m.moe_intermediate_size = m.arch == Arch::Qwen3Moe ? m.intermediate_size : 0;
  m.mlp_only_layers.clear();
  m.decoder_sparse_step = 1;
  m.num_layers = int(dus_source_layers(dense_layers, u.depth_pct).size());
  m.init_std = init_std;
  check_model_dims(m, file, ModelKeys::HfConfig);
  return m;
}

// ---------------------------------------------------------------- weights

UpcycleReader::UpcycleReader(const UpcycleConfig& u, uint64_t seed, const ModelConfig& m, const ParamTable& table)
    : table_(table), noise_(u.noise), init_std_(m.init_std), seed_(seed) {
  const ModelConfig want = upcycled_config(u, m.init_std);
  MT_INPUT_CHECK(want.arch == m.arch && want.num_layers == m.num_layers && want.hidden_size == m.hidden_size &&
                     want.vocab_size == m.vocab_size && want.expert_width() == m.expert_width() &&
                     want.num_experts == m.num_experts && want.num_heads == m.num_heads &&
                     want.num_kv_heads == m.num_kv_heads &&
                     want.resolved_head_dim() == m.resolved_head_dim() &&
                     want.tie_word_embeddings == m.tie_word_embeddings,
                 "upcycle.from: ", u.from, "/config.json does not give the model shape this run was set up with "
                 "(did the directory change?)");
  // Dense layer count: the config's num_hidden_layers (upcycled_config with depth 0).
  UpcycleConfig flat = u;
  flat.depth_pct = 0;
  const int dense_layers = upcycled_config(flat, m.init_std).num_layers;
  const std::vector<int> source = dus_source_layers(dense_layers, u.depth_pct);
  MT_CHECK(int(source.size()) == m.num_layers, "DUS layer count");

  // Target HF name → recipe, for the whole logical model.
  std::unordered_map<std::string, Recipe> recipe;
  recipe["model.embed_tokens.weight"] = {"model.embed_tokens.weight"};
  recipe["model.norm.weight"] = {"model.norm.weight"};
  if (!m.tie_word_embeddings) recipe["lm_head.weight"] = {"lm_head.weight"};
  for (int l = 0; l < m.num_layers; ++l) {
    const LayerNames n = layer_names(m, l);
    const std::string d = "model.layers." + std::to_string(source[size_t(l)]) + ".";
    recipe[n.input_norm] = {d + "input_layernorm.weight"};
    recipe[n.post_norm] = {d + "post_attention_layernorm.weight"};
    recipe[n.q] = {d + "self_attn.q_proj.weight"};
    recipe[n.k] = {d + "self_attn.k_proj.weight"};
    recipe[n.v] = {d + "self_attn.v_proj.weight"};
    recipe[n.o] = {d + "self_attn.o_proj.weight"};
    if (!n.q_norm.empty()) {
      recipe[n.q_norm] = {d + "self_attn.q_norm.weight"};
      recipe[n.k_norm] = {d + "self_attn.k_norm.weight"};
    }
    MT_CHECK(!n.router.empty(), "upcycled layer ", l, " is not an MoE layer");
    recipe[n.router] = {""};
    for (int e = 0; e < m.num_experts; ++e) {
      recipe[n.w1[size_t(e)]] = {d + "mlp.gate_proj.weight", true};
      recipe[n.w3[size_t(e)]] = {d + "mlp.up_proj.weight", true};
      recipe[n.w2[size_t(e)]] = {d + "mlp.down_proj.weight", true};
    }
  }

  // Group this table's entries by dense source, so each dense tensor is converted once.
  WeightSource& dense = dense_;
  open_weights(u.from, dense);
  std::map<std::string, std::vector<const ParamInfo*>> by_source;
  std::vector<const ParamInfo*>& routers = routers_;
  std::vector<std::string> missing;
  for (const ParamInfo& p : table.entries()) {
    if (is_lora_name(p.name)) continue;  // LoRA adapters: initialised or imported by the caller
    auto it = recipe.find(p.name);
    MT_CHECK(it != recipe.end(), "no upcycling recipe for ", p.name);
    if (it->second.source.empty()) {
      routers.push_back(&p);
      continue;
    }
    const TensorEntry* t = dense.find(it->second.source);
    if (!t) {
      if (std::find(missing.begin(), missing.end(), it->second.source) == missing.end())
        missing.push_back(it->second.source);
      continue;
    }
    MT_INPUT_CHECK(t->shape == p.shape, dense.file_of.at(t->name)->path(), ": tensor ", t->name, " has shape ",
                   shape_str(t->shape), ", expected ", shape_str(p.shape), " for ", p.name, " (from config.json)");
    MT_INPUT_CHECK(convertible_to_f32(t->dtype), dense.file_of.at(t->name)->path(), ": tensor ", t->name, " has dtype ",
                   t->dtype, "; allowed: F32, BF16, F16, F64");
    by_source[it->second.source].push_back(&p);
  }
  if (!missing.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) os << (i ? ", " : "") << missing[i];
    if (missing.size() > 5) os << ", ... (" << missing.size() - 5 << " more)";
    const bool lm = std::find(missing.begin(), missing.end(), "lm_head.weight") != missing.end();
    MT_INPUT_FAIL("upcycle.from: ", dense.desc, ": ", missing.size(), " dense tensor(s) are missing: ", os.str(),
                  lm ? "; lm_head.weight is absent: if the model ties it to the embeddings, config.json needs "
                       "tie_word_embeddings: true"
                     : "");
  }

  for (const auto& [name, targets] : by_source)
    sources_.push_back({name, recipe.at(targets.front()->name).expert && u.noise > 0, targets});
}

void UpcycleReader::read_unit(int unit, float* dst) const {
  MT_CHECK(unit >= 0 && size_t(unit) < table_.units().size(), "UpcycleReader: unit ", unit, " out of range");
  const i64 begin = table_.units()[size_t(unit)].begin;  // dst[0] is table element `begin`
  const WeightSource& dense = dense_;
  const Philox ph(seed_, RngPurpose::Upcycle);
  std::vector<float> buf;
  for (const Source& s : sources_) {
    const std::string& name = s.name;
    if (std::none_of(s.targets.begin(), s.targets.end(), [&](const ParamInfo* p) { return p->unit == unit; }))
      continue;
    const TensorEntry& t = *dense.find(name);
    const i64 n = t.numel();
    buf.resize(size_t(n));
    convert_to_f32(t, buf.data());
    if (const i64 at = first_non_finite(buf.data(), n); at >= 0) {
      i64 count = 0;
      for (i64 i = 0; i < n; ++i) count += std::isfinite(buf[size_t(i)]) ? 0 : 1;
      MT_INPUT_FAIL("upcycle.from: ", dense.file_of.at(name)->path(), ": tensor ", name, " holds ", count,
                    " non-finite value(s) (first at flat index ", at, ": ", buf[size_t(at)],
                    "); they would be copied into the MoE model — fix the dense model first");
    }
    const bool noisy = s.noisy;
    double scale = 0;
    if (noisy) {  // noise · std(W), std over the whole dense tensor (population)
      double mean = 0, var = 0;
      for (i64 i = 0; i < n; ++i) mean += buf[size_t(i)];
      mean /= double(std::max<i64>(n, 1));
      for (i64 i = 0; i < n; ++i) var += (buf[size_t(i)] - mean) * (buf[size_t(i)] - mean);
      scale = noise_ * std::sqrt(var / double(std::max<i64>(n, 1)));
    }
    for (const ParamInfo* p : s.targets) {
      if (p->unit != unit) continue;
      float* out = dst + (p->offset - begin);
      if (!noisy || scale == 0) {
        std::copy(buf.begin(), buf.end(), out);
        continue;
      }
      const uint32_t stream = name_stream(p->name);
#pragma omp parallel for schedule(static)
      for (i64 i = 0; i < n; ++i)
        out[i] = float(double(buf[size_t(i)]) + scale * ph.normal(uint64_t(i), stream, 0));
    }
  }
  // Fresh router: N(0, init_std), sub-stream 1.
  for (const ParamInfo* p : routers_) {
    if (p->unit != unit) continue;
    float* out = dst + (p->offset - begin);
    const uint32_t stream = name_stream(p->name);
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < p->numel; ++i) out[i] = float(init_std_ * ph.normal(uint64_t(i), stream, 1));
  }
}

void upcycle_weights(const UpcycleConfig& u, uint64_t seed, const ModelConfig& m, const ParamTable& table,
                     float* params) {
  const UpcycleReader reader(u, seed, m, table);
  for (const ParamUnit& pu : table.units()) reader.read_unit(int(&pu - table.units().data()), params + pu.begin);
}

UpcycledModel upcycle_dense(const UpcycleConfig& u, uint64_t seed, double init_std) {
  UpcycledModel out;
  out.model = upcycled_config(u, init_std);
  const ParamTable table = build_param_table(out.model);
  out.params.assign(size_t(table.total_numel()), 0.f);
  upcycle_weights(u, seed, out.model, table, out.params.data());
  return out;
}

}  // namespace moe
