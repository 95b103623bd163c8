// Owns PEFT adapter I/O (both layouts, docs/PEFT_LAYOUT.md) and merge into full weights (ISSUE11 items 4–5).
#include "io/peft_adapter.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace moe {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

const LoraProj kAttn[] = {LoraProj::Q, LoraProj::K, LoraProj::V, LoraProj::O};
const char* const kPrefix = "base_model.model.";  // PEFT's key prefix (PeftModel → LoraModel → the HF model)

std::string L_(int l) { return "model.layers." + std::to_string(l) + "."; }
std::string block(const ModelConfig& m) { return m.arch == Arch::Mixtral ? "block_sparse_moe" : "mlp"; }

// The per-expert (transformers 4.x) module name of an expert projection.
const char* v4_expert_module(const ModelConfig& m, LoraProj p) {
  const bool mix = m.arch == Arch::Mixtral;
  switch (p) {
    case LoraProj::Gate: return mix ? "w1" : "gate_proj";
    case LoraProj::Up: return mix ? "w3" : "up_proj";
    default: return mix ? "w2" : "down_proj";
  }
}

struct Dims {
  i64 H, I, E, q_out, kv_out;
};
Dims dims(const ModelConfig& m) {
  const i64 D = m.resolved_head_dim();
  return {m.hidden_size, m.expert_width(), m.num_experts, m.num_heads * D, m.num_kv_heads * D};
}
// [in, out] of an attention projection.
std::pair<i64, i64> attn_io(const Dims& d, LoraProj p) {
  switch (p) {
    case LoraProj::Q: return {d.H, d.q_out};
    case LoraProj::K:
    case LoraProj::V: return {d.H, d.kv_out};
    default: return {d.q_out, d.H};
  }
}

int gate_up_rows_n(const AdapterSet& a) { return int(a.targets_proj(LoraProj::Gate)) + int(a.targets_proj(LoraProj::Up)); }

const AdapterTensor& get(const AdapterSet& a, const std::string& n) { return a.tensors.at(n); }

void write_json_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << text;
    out.close();
    MT_INPUT_CHECK(out.good(), "cannot write ", tmp);
  }
  MT_INPUT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path);
}

double scaling_of(double alpha, int r, RsLora rs) { return rs == RsLora::On ? alpha / std::sqrt(double(r)) : alpha / r; }

}  // namespace

double AdapterSet::scaling() const { return scaling_of(alpha, r, rslora); }

bool AdapterSet::targets_proj(LoraProj p) const { return std::find(targets.begin(), targets.end(), p) != targets.end(); }

const char* lora_proj_name(LoraProj p) {
  static const char* const n[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return n[int(p)];
}

std::string lora_attn_name(int layer, LoraProj p, char ab) {
  return L_(layer) + "self_attn." + lora_proj_name(p) + ".lora_" + ab + ".weight";
}

std::string lora_expert_name(const ModelConfig& m, int layer, int expert, LoraProj p, char ab) {
  return L_(layer) + block(m) + ".experts." + std::to_string(expert) + "." +
         (p == LoraProj::Down ? "down_proj" : "gate_up_proj") + ".lora_" + ab + ".weight";
}

// ---------------------------------------------------------------- checks

void check_adapter_set(const ModelConfig& m, const AdapterSet& a, const std::string& what) {
  MT_INPUT_CHECK(a.r >= 1, what, ": r = ", a.r, " must be >= 1");
  MT_INPUT_CHECK(std::isfinite(a.alpha), what, ": lora_alpha must be finite");
  MT_INPUT_CHECK(a.dropout >= 0 && a.dropout < 1, what, ": lora_dropout = ", a.dropout, " outside [0, 1)");
  const Dims d = dims(m);
  std::set<std::string> expected;
  // One (A, B) pair: shapes [r_t, in] / [out, r_t], r_t = rank_of_layer (the first seen in the layer when < 0).
  auto pair = [&](const std::string& an, const std::string& bn, i64 in, i64 out, i64& rank) {
    expected.insert(an);
    expected.insert(bn);
    auto ia = a.tensors.find(an), ib = a.tensors.find(bn);
    MT_INPUT_CHECK(ia != a.tensors.end(), what, ": missing adapter tensor ", an,
                   " (the targets must cover every layer and, for experts, every expert)");
    MT_INPUT_CHECK(ib != a.tensors.end(), what, ": missing adapter tensor ", bn,
                   " (the targets must cover every layer and, for experts, every expert)");
    const auto& sa = ia->second.shape;
    const auto& sb = ib->second.shape;
    MT_INPUT_CHECK(sa.size() == 2 && sa[0] >= 1 && sa[1] == in, what, ": ", an, " has shape ", shape_str(sa),
                   ", the model needs [rank, ", in, "]");
    MT_INPUT_CHECK(sb.size() == 2 && sb[0] == out && sb[1] == sa[0], what, ": ", bn, " has shape ", shape_str(sb),
                   ", the model and its lora_A need [", out, ", ", sa[0], "]");
    if (rank < 0) rank = sa[0];
    MT_INPUT_CHECK(sa[0] == rank, what, ": ", an, " has rank ", sa[0], " but other experts of its layer have rank ",
                   rank, " (one rank per target and layer)");
  };
  for (int l = 0; l < m.num_layers; ++l) {
    for (LoraProj p : kAttn) {
      if (!a.targets_proj(p)) continue;
      i64 rank = -1;
      const auto [in, out] = attn_io(d, p);
      pair(lora_attn_name(l, p, 'A'), lora_attn_name(l, p, 'B'), in, out, rank);
    }
    if (!m.is_moe_layer(l)) continue;
    const int n = gate_up_rows_n(a);
    i64 rank_gu = -1, rank_dn = -1;
    for (int e = 0; e < m.num_experts; ++e) {
      if (n > 0)
        pair(lora_expert_name(m, l, e, LoraProj::Gate, 'A'), lora_expert_name(m, l, e, LoraProj::Gate, 'B'), d.H,
             n * d.I, rank_gu);
      if (a.targets_proj(LoraProj::Down))
        pair(lora_expert_name(m, l, e, LoraProj::Down, 'A'), lora_expert_name(m, l, e, LoraProj::Down, 'B'), d.I, d.H,
             rank_dn);
    }
    if (a.router == RouterSave::Saved) {
      const std::string rn = layer_names(m, l).router;
      expected.insert(rn);
      auto it = a.tensors.find(rn);
      MT_INPUT_CHECK(it != a.tensors.end(), what, ": missing the trained router ", rn);
      MT_INPUT_CHECK(it->second.shape == std::vector<i64>({d.E, d.H}), what, ": router ", rn, " has shape ",
                     shape_str(it->second.shape), ", the model needs [", d.E, ", ", d.H, "]");
    }
  }
  for (const auto& [name, t] : a.tensors) {
    MT_INPUT_CHECK(expected.count(name), what, ": tensor ", name,
                   " is not an adapter of the targeted projections of this model");
    i64 numel = 1;
    for (i64 x : t.shape) numel *= x;
    MT_INPUT_CHECK(i64(t.values.size()) == numel, what, ": ", name, " holds ", t.values.size(), " values for shape ",
                   shape_str(t.shape));
    const i64 bad = first_non_finite(t.values.data(), numel);
    MT_INPUT_CHECK(bad < 0, what, ": ", name, " holds a non-finite value at element ", bad);
  }
}

// ---------------------------------------------------------------- write

namespace {

struct Out {
  std::deque<std::vector<float>> own;
  std::vector<TensorToWrite> list;
  void add(const std::string& name, std::vector<i64> shape, std::vector<float> v) {
    own.push_back(std::move(v));
    list.push_back({name, std::move(shape), own.back().data(), StDtype::F32});
  }
};

// rank_pattern / alpha_pattern entries for one group of PEFT modules (one target kind): `short_key` when every
// module of the group has the same rank ≠ r, else one regex per layer (`layer_keys[l]`) whose rank ≠ r.
void rank_patterns(ojson& rp, ojson& ap, const AdapterSet& a, const std::string& short_key,
                   const std::vector<std::pair<std::string, i64>>& layer_keys) {
  if (layer_keys.empty()) return;
  auto alpha_for = [&](i64 rt) {
    return a.rslora == RsLora::On ? a.alpha * std::sqrt(double(rt) / a.r) : a.alpha * double(rt) / a.r;
  };
  bool uniform = true;
  for (const auto& kv : layer_keys) uniform = uniform && kv.second == layer_keys[0].second;
  if (uniform) {
    if (layer_keys[0].second != a.r) {
      rp[short_key] = layer_keys[0].second;
      ap[short_key] = alpha_for(layer_keys[0].second);
    }
    return;
  }
  for (const auto& [key, rt] : layer_keys)
    if (rt != a.r) {
      rp[key] = rt;
      ap[key] = alpha_for(rt);
    }
}

// A PEFT regex of a module path: dots escaped (rank_pattern keys are regular expressions).
std::string escaped(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '.') r += '\\';
    r += c;
  }
  return r;
}

}  // namespace

void write_peft_adapter(const std::string& dir, const ModelConfig& m, const AdapterSet& a, PeftLayout layout,
                        const std::string& base_model) {
  check_adapter_set(m, a, "adapter for " + dir);
  const Dims d = dims(m);
  const bool fused = layout == PeftLayout::Fused;
  const std::string P = kPrefix;
  const int n = gate_up_rows_n(a);
  Out out;
  ojson rp = ojson::object(), ap = ojson::object();
  // Rank per layer of each target group, for rank_pattern.
  std::map<std::string, std::vector<std::pair<std::string, i64>>> ranks;
  for (int l = 0; l < m.num_layers; ++l) {
    for (LoraProj p : kAttn) {
      if (!a.targets_proj(p)) continue;
      const std::string an = lora_attn_name(l, p, 'A'), bn = lora_attn_name(l, p, 'B');
      out.add(P + an, get(a, an).shape, get(a, an).values);
      out.add(P + bn, get(a, bn).shape, get(a, bn).values);
      ranks[lora_proj_name(p)].push_back({escaped(L_(l) + "self_attn." + lora_proj_name(p)), get(a, an).shape[0]});
    }
    if (!m.is_moe_layer(l)) continue;
    if (a.router == RouterSave::Saved) {
      const std::string rn = layer_names(m, l).router;
      const std::string key = fused ? L_(l) + "mlp.gate.weight" : rn;  // transformers 5 names the block mlp
      out.add(P + key, get(a, rn).shape, get(a, rn).values);
    }
    const bool has_gu = n > 0, has_dn = a.targets_proj(LoraProj::Down);
    for (LoraProj kind : {LoraProj::Gate, LoraProj::Down}) {
      if (kind == LoraProj::Gate ? !has_gu : !has_dn) continue;
      const i64 in = kind == LoraProj::Gate ? d.H : d.I;
      const i64 rows = kind == LoraProj::Gate ? n * d.I : d.H;  // logical B rows
      const i64 rk = get(a, lora_expert_name(m, l, 0, kind, 'A')).shape[0];
      if (fused) {
        // docs/PEFT_LAYOUT.md (a): A [E·r, in] expert-major; B [out, r·E] expert-minor (column k·E + e).
        const i64 fout = kind == LoraProj::Gate ? 2 * d.I : d.H;
        const i64 row0 = kind == LoraProj::Gate && n == 1 && a.targets_proj(LoraProj::Up) ? d.I : 0;
        std::vector<float> A(size_t(d.E * rk * in)), B(size_t(fout * rk * d.E), 0.f);
        for (int e = 0; e < d.E; ++e) {
          const AdapterTensor& ae = get(a, lora_expert_name(m, l, e, kind, 'A'));
          const AdapterTensor& be = get(a, lora_expert_name(m, l, e, kind, 'B'));
          std::copy(ae.values.begin(), ae.values.end(), A.begin() + e * rk * in);
          for (i64 o = 0; o < rows; ++o)
            for (i64 k = 0; k < rk; ++k) B[size_t((row0 + o) * rk * d.E + k * d.E + e)] = be.values[size_t(o * rk + k)];
        }
        const bool nested = kind == LoraProj::Gate && has_dn;  // inner wrapper: gate_up_proj (PEFT_LAYOUT (a))
        const std::string key = P + L_(l) + "mlp.experts." + (nested ? "base_layer." : "");
        out.add(key + "lora_A.weight", {d.E * rk, in}, std::move(A));
        out.add(key + "lora_B.weight", {fout, rk * d.E}, std::move(B));
        const char* pname = kind == LoraProj::Gate ? "gate_up_proj" : "down_proj";
        ranks[pname].push_back({escaped(L_(l) + "mlp.experts." + pname), rk});
      } else {
        // transformers 4.x: each expert's Linear gets its own LoRA; gate and up share A (duplicated here).
        std::vector<LoraProj> projs;
        if (kind == LoraProj::Down) projs = {LoraProj::Down};
        for (LoraProj p : {LoraProj::Gate, LoraProj::Up})
          if (kind == LoraProj::Gate && a.targets_proj(p)) projs.push_back(p);
        for (int e = 0; e < d.E; ++e) {
          const AdapterTensor& ae = get(a, lora_expert_name(m, l, e, kind, 'A'));
          const AdapterTensor& be = get(a, lora_expert_name(m, l, e, kind, 'B'));
          for (size_t j = 0; j < projs.size(); ++j) {
            const i64 pout = projs[j] == LoraProj::Down ? d.H : d.I;
            const std::string key = P + L_(l) + block(m) + ".experts." + std::to_string(e) + "." +
                                    v4_expert_module(m, projs[j]) + ".";
            out.add(key + "lora_A.weight", ae.shape, ae.values);
            out.add(key + "lora_B.weight", {pout, rk},
                    std::vector<float>(be.values.begin() + j * pout * rk, be.values.begin() + (j + 1) * pout * rk));
          }
        }
        for (LoraProj p : projs)
          ranks[v4_expert_module(m, p)].push_back(
              {escaped(L_(l) + block(m) + ".experts.") + "[0-9]+\\." + v4_expert_module(m, p), rk});
      }
    }
  }
  for (const auto& [short_key, keys] : ranks) rank_patterns(rp, ap, a, short_key, keys);

  // adapter_config.json: what PEFT's LoraConfig needs; the other keys keep PEFT's defaults.
  ojson cfg;
  cfg["peft_type"] = "LORA";
  cfg["task_type"] = "CAUSAL_LM";
  cfg["base_model_name_or_path"] = base_model.empty() ? ojson(nullptr) : ojson(base_model);
  cfg["r"] = a.r;
  cfg["lora_alpha"] = a.alpha;
  cfg["use_rslora"] = a.rslora == RsLora::On;
  const bool expert_params = fused && (n > 0 || a.targets_proj(LoraProj::Down));
  cfg["lora_dropout"] = expert_params ? 0.0 : a.dropout;  // PEFT refuses dropout on target_parameters
  cfg["bias"] = "none";
  cfg["fan_in_fan_out"] = false;
  cfg["use_dora"] = false;
  cfg["init_lora_weights"] = true;
  cfg["inference_mode"] = true;
  ojson attn = ojson::array();
  for (LoraProj p : kAttn)
    if (a.targets_proj(p)) attn.push_back(lora_proj_name(p));
  if (fused) {
    cfg["target_modules"] = attn;
    ojson tp = ojson::array();
    if (n > 0) tp.push_back("mlp.experts.gate_up_proj");
    if (a.targets_proj(LoraProj::Down)) tp.push_back("mlp.experts.down_proj");
    cfg["target_parameters"] = tp;
  } else {
    std::vector<std::string> ex;
    for (LoraProj p : {LoraProj::Gate, LoraProj::Up, LoraProj::Down})
      if (a.targets_proj(p)) ex.push_back(v4_expert_module(m, p));
    bool dense_mlp = false;  // Qwen3 dense-MLP layers also have gate_proj/up_proj/down_proj modules
    for (int l = 0; l < m.num_layers; ++l) dense_mlp = dense_mlp || !m.is_moe_layer(l);
    if (!dense_mlp || ex.empty()) {  // names (PEFT suffix match): what users write, and what transformers 5 converts
      for (const auto& x : ex) attn.push_back(x);
      cfg["target_modules"] = attn;
    } else {  // names would also wrap the dense MLP layers: a full-match regex (PEFT's str form) of experts only
      std::string re;
      auto alt = [](const std::vector<std::string>& v) {
        std::string s;
        for (const auto& x : v) s += (s.empty() ? "" : "|") + x;
        return "(" + s + ")";
      };
      std::vector<std::string> at;
      for (const auto& x : attn) at.push_back(x.get<std::string>());
      if (!at.empty()) re = ".*\\.self_attn\\." + alt(at);
      if (!ex.empty()) re += std::string(re.empty() ? "" : "|") + ".*\\.mlp\\.experts\\.[0-9]+\\." + alt(ex);
      cfg["target_modules"] = re;
    }
  }
  cfg["modules_to_save"] = a.router == RouterSave::Saved
                               ? ojson::array({fused ? std::string("mlp.gate") : block(m) + ".gate"})
                               : ojson(nullptr);
  cfg["rank_pattern"] = rp;
  cfg["alpha_pattern"] = ap;
  cfg["layers_to_transform"] = nullptr;
  cfg["layers_pattern"] = nullptr;

  std::error_code ec;
  fs::create_directories(dir, ec);
  MT_INPUT_CHECK(!ec && fs::is_directory(dir), "cannot create adapter directory ", dir, ": ", ec.message());
  write_safetensors(dir + "/adapter_model.safetensors", out.list);
  write_json_atomic(dir + "/adapter_config.json", cfg.dump(2) + "\n");
}

// ---------------------------------------------------------------- merge

void merge_adapter(float* params, const ParamTable& table, const ModelConfig& m, const AdapterSet& a) {
  check_adapter_set(m, a, "adapter to merge");
  const Dims d = dims(m);
  const float s = float(a.scaling());
  // W [out, in] += s · B [out, r] @ A [r, in] (PEFT's get_delta_weight: B @ A · scaling).
  auto fold = [&](const std::string& wname, const float* B, i64 ldb, const AdapterTensor& A, i64 out) {
    const ParamInfo& w = table.at(wname);
    const i64 in = A.shape[1], r = A.shape[0];
    MT_CHECK(w.numel == out * in, "merge target ", wname, " has ", w.numel, " elements, not ", out, "x", in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(out), int(in), int(r), s, B, int(ldb),
                A.values.data(), int(in), 1.f, params + w.offset, int(in));
  };
  for (int l = 0; l < m.num_layers; ++l) {
    const LayerNames ln = layer_names(m, l);
    for (LoraProj p : kAttn) {
      if (!a.targets_proj(p)) continue;
      const std::string& wn = p == LoraProj::Q ? ln.q : p == LoraProj::K ? ln.k : p == LoraProj::V ? ln.v : ln.o;
      const AdapterTensor& A = get(a, lora_attn_name(l, p, 'A'));
      const AdapterTensor& B = get(a, lora_attn_name(l, p, 'B'));
      fold(wn, B.values.data(), B.shape[1], A, B.shape[0]);
    }
    if (!m.is_moe_layer(l)) continue;
    for (int e = 0; e < m.num_experts; ++e) {
      if (gate_up_rows_n(a) > 0) {
        const AdapterTensor& A = get(a, lora_expert_name(m, l, e, LoraProj::Gate, 'A'));
        const AdapterTensor& B = get(a, lora_expert_name(m, l, e, LoraProj::Gate, 'B'));
        const i64 r = B.shape[1];
        i64 row = 0;  // B rows: gate block first (when targeted), then up
        if (a.targets_proj(LoraProj::Gate)) fold(ln.w1[e], B.values.data(), r, A, d.I), row += d.I;
        if (a.targets_proj(LoraProj::Up)) fold(ln.w3[e], B.values.data() + row * r, r, A, d.I);
      }
      if (a.targets_proj(LoraProj::Down)) {
        const AdapterTensor& A = get(a, lora_expert_name(m, l, e, LoraProj::Down, 'A'));
        const AdapterTensor& B = get(a, lora_expert_name(m, l, e, LoraProj::Down, 'B'));
        fold(ln.w2[e], B.values.data(), B.shape[1], A, d.H);
      }
    }
    if (a.router == RouterSave::Saved) {
      const AdapterTensor& g = get(a, ln.router);
      std::copy(g.values.begin(), g.values.end(), params + table.at(ln.router).offset);
    }
  }
}

}  // namespace moe
