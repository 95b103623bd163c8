// Owns reading PEFT LoRA adapters (either layout, docs/PEFT_LAYOUT.md) into the logical AdapterSet, with every refusal.
#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.h"
#include "io/json_file.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"

namespace moe {

namespace {

using ojson = nlohmann::ordered_json;

// One LoRA pair as found in the file, before conversion.
struct Pair {
  const TensorEntry* A = nullptr;
  const TensorEntry* B = nullptr;
  std::string module;  // PEFT's module key (rank_pattern is matched against it), e.g. model.layers.0.self_attn.q_proj
};

std::vector<float> to_f32(const TensorEntry& t, const std::string& file) {
  MT_INPUT_CHECK(convertible_to_f32(t.dtype), file, ": tensor ", t.name, " has dtype ", t.dtype,
                 " (allowed: F32, BF16, F16, F64)");
  std::vector<float> v(size_t(t.numel()));
  convert_to_f32(t, v.data());
  const i64 bad = first_non_finite(v.data(), t.numel());
  MT_INPUT_CHECK(bad < 0, file, ": tensor ", t.name, " holds a non-finite value at element ", bad);
  return v;
}

bool parse_int(const std::string& s, int& out) {
  if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), ::isdigit)) return false;
  out = std::stoi(s);
  return true;
}

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> r(1);
  for (char c : s) {
    if (c == '.') r.emplace_back();
    else r.back().push_back(c);
  }
  return r;
}

// PEFT's get_pattern_key: the first key (file order) with re.match(rf"(.*\.)?({key})$", module); else none.
const ojson* pattern_value(const ojson& pat, const std::string& module, const std::string& cfg_file, const char* what) {
  for (auto it = pat.begin(); it != pat.end(); ++it) {
    std::regex re;
    try {
      re = std::regex("(.*\\.)?(" + it.key() + ")", std::regex::ECMAScript);
    } catch (const std::regex_error&) {
      MT_INPUT_FAIL(cfg_file, ": ", what, " key '", brief_text(it.key()), "' is not a regular expression moe-train reads");
    }
    if (std::regex_match(module, re)) return &it.value();
  }
  return nullptr;
}

// alpha / r, or alpha / √r with rsLoRA (PEFT LoraLayer.update_layer).
double scaling_of_cfg(double alpha, int r, RsLora rs) { return rs == RsLora::On ? alpha / std::sqrt(double(r)) : alpha / r; }

void refuse_true(const JsonKeys& k, const char* key, const char* why) {
  MT_INPUT_CHECK(!k.has(key) || (k.j[key].is_boolean() && !k.j[key].get<bool>()), k.file, ": ", key, " = ",
                 json_brief(k.j[key]), " is not supported (", why, ")");
}

void refuse_set(const JsonKeys& k, const char* key, const char* why) {
  const bool empty = !k.has(key) || (k.j[key].is_array() && k.j[key].empty()) || (k.j[key].is_object() && k.j[key].empty());
  MT_INPUT_CHECK(empty, k.file, ": ", key, " = ", json_brief(k.j[key]), " is not supported (", why, ")");
}

}  // namespace

AdapterSet read_peft_adapter(const std::string& dir, const ModelConfig& m) {
  const std::string cfg_file = dir + "/adapter_config.json", st_file = dir + "/adapter_model.safetensors";
  MT_INPUT_CHECK(is_regular_file(cfg_file), "PEFT adapter ", dir, ": ", cfg_file, " not found");
  MT_INPUT_CHECK(is_regular_file(st_file), "PEFT adapter ", dir, ": ", st_file, " not found",
                 is_regular_file(dir + "/adapter_model.bin")
                     ? " (adapter_model.bin is a pickle: save the adapter with safe_serialization=True)"
                     : "");
  const nlohmann::json j = read_json_file(cfg_file);
  MT_INPUT_CHECK(j.is_object(), cfg_file, ": must be a JSON object, got ", json_brief(j));
  const JsonKeys k{j, cfg_file};
  MT_INPUT_CHECK(k.has("peft_type") && j["peft_type"] == "LORA", cfg_file, ": peft_type = ",
                 k.has("peft_type") ? json_brief(j["peft_type"]) : std::string("(missing)"),
                 "; moe-train reads LoRA adapters only (\"LORA\")");
  AdapterSet a;
  a.r = k.get_int("r");
  a.alpha = k.get_num("lora_alpha", 8.0);  // LoraConfig's default
  a.rslora = k.get_bool("use_rslora", false) ? RsLora::On : RsLora::Off;
  a.dropout = k.get_num("lora_dropout", 0.0);
  MT_INPUT_CHECK(a.dropout >= 0 && a.dropout < 1, cfg_file, ": lora_dropout = ", a.dropout, " outside [0, 1)");
  refuse_true(k, "use_dora", "DoRA changes the adapter's function; moe-train trains and merges plain LoRA");
  refuse_true(k, "fan_in_fan_out", "only nn.Linear-oriented [out, in] weights exist in these models");
  refuse_true(k, "lora_bias", "LoRA bias terms");
  refuse_true(k, "use_qalora", "QA-LoRA");
  MT_INPUT_CHECK(!k.has("bias") || j["bias"] == "none", cfg_file, ": bias = ", json_brief(j["bias"]),
                 " is not supported (allowed: \"none\"; these models have no bias parameters)");
  refuse_set(k, "layer_replication", "layer replication");
  refuse_set(k, "trainable_token_indices", "trainable tokens");
  refuse_set(k, "alora_invocation_tokens", "activated LoRA");
  if (k.has("modules_to_save")) {
    MT_INPUT_CHECK(j["modules_to_save"].is_array(), cfg_file, ": modules_to_save must be a list, got ",
                   json_brief(j["modules_to_save"]));
    for (const auto& v : j["modules_to_save"])
      MT_INPUT_CHECK(v == "gate" || v == "mlp.gate" || v == "block_sparse_moe.gate", cfg_file,
                     ": modules_to_save entry ", json_brief(v),
                     " is not supported (allowed: the router, \"mlp.gate\" or \"block_sparse_moe.gate\")");
  }
  // rank_pattern / alpha_pattern in file order (PEFT takes the first matching key).
  ojson rank_pat = ojson::object(), alpha_pat = ojson::object();
  {
    const ojson oj = ojson::parse(j.dump());  // same content; the per-key order only matters for overlapping keys
    for (const char* key : {"rank_pattern", "alpha_pattern"}) {
      if (!oj.contains(key) || oj[key].is_null()) continue;
      MT_INPUT_CHECK(oj[key].is_object(), cfg_file, ": ", key, " must be an object, got ", json_brief(j[key]));
      for (auto it = oj[key].begin(); it != oj[key].end(); ++it)
        MT_INPUT_CHECK(it.value().is_number() && std::isfinite(it.value().get<double>()) &&
                           (key[0] != 'r' || (it.value().is_number_integer() && it.value().get<i64>() >= 1)),
                       cfg_file, ": ", key, "['", brief_text(it.key()), "'] = ", json_brief(j[key][it.key()]),
                       key[0] == 'r' ? " must be an integer >= 1" : " must be a finite number");
      (key[0] == 'r' ? rank_pat : alpha_pat) = oj[key];
    }
  }

  // ---- tensors: classify every key
  const SafetensorsFile f = SafetensorsFile::open(st_file);
  const std::string blk = m.arch == Arch::Mixtral ? "block_sparse_moe" : "mlp";
  const bool mix = m.arch == Arch::Mixtral;
  std::map<std::string, Pair> pairs;  // logical pair id → tensors
  std::map<int, const TensorEntry*> routers;
  std::set<std::string> layouts;
  for (const TensorEntry& t : f.tensors()) {
    const std::string& key = t.name;
    const std::string P = "base_model.model.";
    MT_INPUT_CHECK(key.compare(0, P.size(), P) == 0, st_file, ": tensor ", key,
                   " does not start with base_model.model. (not a PEFT LoRA adapter of a causal LM)");
    const std::vector<std::string> s = split_dots(key.substr(P.size()));
    int layer = -1;
    MT_INPUT_CHECK(s.size() >= 5 && s[0] == "model" && s[1] == "layers" && parse_int(s[2], layer) &&
                       layer < m.num_layers,
                   st_file, ": tensor ", key, " is not a per-layer adapter tensor of this ", m.num_layers,
                   "-layer model (moe-train's adapters: attention q/k/v/o, experts, the router)");
    const std::string lp = "model.layers." + s[2] + ".";
    const size_t ns = s.size();
    const bool lora = ns >= 3 && s[ns - 1] == "weight" && (s[ns - 2] == "lora_A" || s[ns - 2] == "lora_B");
    const char ab = lora ? s[ns - 2].back() : 0;
    auto add = [&](const std::string& id, const std::string& module) {
      Pair& p = pairs[id];
      (ab == 'A' ? p.A : p.B) = &t;
      p.module = module;
    };
    const bool moe_blk = s[3] == "mlp" || (mix && s[3] == "block_sparse_moe");
    if (s[3] == "self_attn" && ns == 7 && lora &&
        (s[4] == "q_proj" || s[4] == "k_proj" || s[4] == "v_proj" || s[4] == "o_proj")) {
      add("attn." + s[2] + "." + s[4], lp + "self_attn." + s[4]);
    } else if (moe_blk && s[4] == "gate" && ns == 6 && s[5] == "weight") {
      MT_INPUT_CHECK(m.is_moe_layer(layer), st_file, ": ", key, ": layer ", layer, " of this model has no router");
      MT_INPUT_CHECK(!routers.count(layer), st_file, ": two router tensors for layer ", layer);
      routers[layer] = &t;
    } else if (moe_blk && s[4] == "gate" && lora) {
      MT_INPUT_FAIL(st_file, ": ", key, " is a LoRA on the router, which moe-train refuses: the router is a "
                    "Linear(hidden, experts), so a LoRA of rank >= experts is larger than the router itself and "
                    "a low-rank one distorts routing; train the router fully (modules_to_save) or freeze it");
    } else if (moe_blk && s[4] == "experts" && lora && (ns == 7 || (ns == 8 && s[5] == "base_layer"))) {
      MT_INPUT_CHECK(m.is_moe_layer(layer), st_file, ": ", key, ": layer ", layer, " of this model has no experts");
      add("fused." + s[2] + (ns == 8 ? ".inner" : ".outer"), lp + s[3] + ".experts");
      layouts.insert("fused");
    } else if (moe_blk && s[4] == "experts" && lora && ns == 9) {
      int e = -1;
      const std::string& pn = s[6];
      const bool known = mix ? (pn == "w1" || pn == "w2" || pn == "w3")
                             : (pn == "gate_proj" || pn == "up_proj" || pn == "down_proj");
      MT_INPUT_CHECK(parse_int(s[5], e) && e < m.num_experts && known && m.is_moe_layer(layer), st_file, ": tensor ",
                     key, " is not an expert adapter of this model (", m.num_experts, " experts, projections ",
                     mix ? "w1/w2/w3" : "gate_proj/up_proj/down_proj", ")");
      add("expert." + s[2] + "." + s[5] + "." + pn, lp + s[3] + ".experts." + s[5] + "." + pn);
      layouts.insert("per-expert");
    } else {
      MT_INPUT_FAIL(st_file, ": tensor ", key, " is not an adapter tensor moe-train supports (LoRA A/B of attention "
                    "q/k/v/o or experts, or the trained router; no DoRA, bias, embedding or other modules)");
    }
  }
  MT_INPUT_CHECK(layouts.size() <= 1, st_file, ": mixes the fused (transformers 5) and per-expert (transformers 4) "
                 "expert layouts; an adapter uses one of them");

  // Rank and scaling of one pair, checked against adapter_config.json; B scaled by the pattern's ratio.
  const double s0 = a.scaling();
  struct Got {
    std::vector<float> A, B;
    i64 rank, in, out;
  };
  auto load = [&](const Pair& p, i64 rank_div) {
    MT_INPUT_CHECK(p.A && p.B, st_file, ": ", (p.A ? p.A : p.B)->name, " has no matching lora_",
                   p.A ? "B" : "A", " tensor");
    MT_INPUT_CHECK(p.A->shape.size() == 2 && p.B->shape.size() == 2, st_file, ": ", p.A->name, " / ", p.B->name,
                   " must be 2-D, got ", shape_str(p.A->shape), " / ", shape_str(p.B->shape));
    const i64 rank = p.A->shape[0] / rank_div;
    MT_INPUT_CHECK(rank >= 1 && p.A->shape[0] == rank * rank_div && p.B->shape[1] == p.A->shape[0], st_file, ": ",
                   p.A->name, " ", shape_str(p.A->shape), " and ", p.B->name, " ", shape_str(p.B->shape),
                   " do not form a LoRA pair", rank_div > 1 ? " of stacked experts" : "");
    const ojson* rv = pattern_value(rank_pat, p.module, cfg_file, "rank_pattern");
    const ojson* av = pattern_value(alpha_pat, p.module, cfg_file, "alpha_pattern");
    const i64 r_cfg = rv ? rv->get<i64>() : a.r;
    MT_INPUT_CHECK(r_cfg == rank, st_file, ": ", p.A->name, " has rank ", rank, " but ", cfg_file, " gives r = ", r_cfg,
                   " for ", p.module, rv ? " (rank_pattern)" : "");
    const double st = scaling_of_cfg(av ? av->get<double>() : a.alpha, int(rank), a.rslora);
    Got g{to_f32(*p.A, st_file), to_f32(*p.B, st_file), rank, p.A->shape[1], p.B->shape[0]};
    if (st != s0)
      for (float& x : g.B) x = float(double(x) * (st / s0));
    return g;
  };
  auto put = [&](const std::string& name, std::vector<i64> shape, std::vector<float> v) {
    a.tensors[name] = AdapterTensor{std::move(shape), std::move(v)};
  };
  const i64 H = m.hidden_size, I = m.expert_width(), E = m.num_experts;
  std::set<LoraProj> targets;
  std::map<std::string, Got> v4;  // per-expert pairs, converted below
  for (const auto& [id, p] : pairs) {
    const std::vector<std::string> s = split_dots(id);
    const int l = std::stoi(s[1]);
    if (s[0] == "attn") {
      const LoraProj pj = s[2] == "q_proj" ? LoraProj::Q : s[2] == "k_proj" ? LoraProj::K : s[2] == "v_proj" ? LoraProj::V : LoraProj::O;
      Got g = load(p, 1);
      targets.insert(pj);
      put(lora_attn_name(l, pj, 'A'), {g.rank, g.in}, std::move(g.A));
      put(lora_attn_name(l, pj, 'B'), {g.out, g.rank}, std::move(g.B));
    } else if (s[0] == "fused") {
      MT_INPUT_CHECK(p.A && p.B && p.A->shape.size() == 2 && p.B->shape.size() == 2, st_file, ": ",
                     (p.A ? p.A : p.B)->name, ": incomplete or not 2-D fused expert LoRA pair");
      // Which fused parameter: by shape (PEFT_LAYOUT (a): the nesting prefix alone does not say).
      const bool gu = p.A->shape[1] == H && p.B->shape[0] == 2 * I;
      const bool dn = p.A->shape[1] == I && p.B->shape[0] == H;
      MT_INPUT_CHECK(gu || dn, st_file, ": ", p.A->name, " ", shape_str(p.A->shape), " / ", p.B->name, " ",
                     shape_str(p.B->shape), " fit neither gate_up_proj ([E·r, ", H, "] / [", 2 * I, ", r·E]) nor "
                     "down_proj ([E·r, ", I, "] / [", H, ", r·E]) of this model");
      Pair q = p;
      q.module += gu ? ".gate_up_proj" : ".down_proj";
      Got g = load(q, E);
      const LoraProj kind = gu ? LoraProj::Gate : LoraProj::Down;
      if (gu) targets.insert(LoraProj::Gate), targets.insert(LoraProj::Up);
      else targets.insert(LoraProj::Down);
      const i64 r = g.rank;
      for (int e = 0; e < E; ++e) {
        const std::string an = lora_expert_name(m, l, e, kind, 'A');
        MT_INPUT_CHECK(!a.tensors.count(an), st_file, ": layer ", l, " holds two fused ",
                       gu ? "gate_up_proj" : "down_proj", " adapters");
        std::vector<float> Ae(g.A.begin() + e * r * g.in, g.A.begin() + (e + 1) * r * g.in), Be(size_t(g.out * r));
        for (i64 o = 0; o < g.out; ++o)
          for (i64 kk = 0; kk < r; ++kk) Be[size_t(o * r + kk)] = g.B[size_t(o * r * E + kk * E + e)];
        put(an, {r, g.in}, std::move(Ae));
        put(lora_expert_name(m, l, e, kind, 'B'), {g.out, r}, std::move(Be));
      }
    } else {
      v4[id] = load(p, 1);
    }
  }
  // transformers-4 experts: w1/w3 → one gate_up adapter (A stacked, B block-diagonal), w2 → down.
  const char* n1 = mix ? "w1" : "gate_proj";
  const char* n3 = mix ? "w3" : "up_proj";
  const char* n2 = mix ? "w2" : "down_proj";
  std::set<std::string> has;
  for (const auto& [id, g] : v4) has.insert(split_dots(id)[3]);
  const bool g1 = has.count(n1), g3 = has.count(n3);
  if (g1) targets.insert(LoraProj::Gate);
  if (g3) targets.insert(LoraProj::Up);
  if (has.count(n2)) targets.insert(LoraProj::Down);
  for (int l = 0; l < m.num_layers; ++l) {
    if (!m.is_moe_layer(l)) continue;
    for (int e = 0; e < E; ++e) {
      const std::string id = "expert." + std::to_string(l) + "." + std::to_string(e) + ".";
      auto shape_ok = [&](const std::string& pn, i64 in, i64 out) -> const Got* {
        auto it = v4.find(id + pn);
        if (it == v4.end()) return nullptr;
        MT_INPUT_CHECK(it->second.in == in && it->second.out == out, st_file, ": layer ", l, " expert ", e, " ", pn,
                       " adapter maps ", it->second.in, " -> ", it->second.out, "; the model's ", pn, " maps ", in,
                       " -> ", out);
        return &it->second;
      };
      const Got* a1 = shape_ok(n1, H, I);
      const Got* a3 = shape_ok(n3, H, I);
      const Got* a2 = shape_ok(n2, I, H);
      if (a1 || a3) {
        const i64 r1 = a1 ? a1->rank : 0, r3 = a3 ? a3->rank : 0, rr = r1 + r3, rows = (a1 ? I : 0) + (a3 ? I : 0);
        std::vector<float> A(size_t(rr * H)), B(size_t(rows * rr), 0.f);
        if (a1) std::copy(a1->A.begin(), a1->A.end(), A.begin());
        if (a3) std::copy(a3->A.begin(), a3->A.end(), A.begin() + r1 * H);
        for (i64 o = 0; o < I; ++o) {
          if (a1) std::copy(a1->B.begin() + o * r1, a1->B.begin() + (o + 1) * r1, B.begin() + o * rr);
          if (a3)
            std::copy(a3->B.begin() + o * r3, a3->B.begin() + (o + 1) * r3,
                      B.begin() + ((a1 ? I : 0) + o) * rr + r1);
        }
        put(lora_expert_name(m, l, e, LoraProj::Gate, 'A'), {rr, H}, std::move(A));
        put(lora_expert_name(m, l, e, LoraProj::Gate, 'B'), {rows, rr}, std::move(B));
      }
      if (a2) {
        put(lora_expert_name(m, l, e, LoraProj::Down, 'A'), {a2->rank, I}, a2->A);
        put(lora_expert_name(m, l, e, LoraProj::Down, 'B'), {H, a2->rank}, a2->B);
      }
    }
  }
  for (const auto& [l, t] : routers) put(layer_names(m, l).router, t->shape, to_f32(*t, st_file));
  a.router = routers.empty() ? RouterSave::Frozen : RouterSave::Saved;
  a.targets.assign(targets.begin(), targets.end());
  MT_INPUT_CHECK(!a.targets.empty() || a.router == RouterSave::Saved, st_file, ": holds no adapter tensor");
  check_adapter_set(m, a, st_file);
  return a;
}

}  // namespace moe
