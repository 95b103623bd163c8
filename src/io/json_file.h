// Owns the small helpers shared by the HF readers (hf_model, upcycle): JSON files and typed keys, RoPE base, regular-file test, non-finite scan, shape text.
#pragma once
#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dims.h"
#include "core/error.h"

namespace moe {

inline bool is_regular_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Parses a JSON file; BadInput naming the file when it is unreadable or not JSON.
inline nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  MT_INPUT_CHECK(in.good(), "cannot read ", path);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    MT_INPUT_FAIL(path, ": invalid JSON (", e.what(), ")");
  }
}

// Typed access to the keys of a JSON config (config.json); every failure names the file and the key.
struct JsonKeys {
  const nlohmann::json& j;
  const std::string& file;
  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  int get_int(const char* k, bool positive = true) const {
    MT_INPUT_CHECK(has(k), file, ": missing required key '", k, "'");
    const nlohmann::json& v = j[k];
    MT_INPUT_CHECK(v.is_number_integer(), file, ": key '", k, "' must be an integer, got ", v.dump());
    const long long x = v.get<long long>();
    MT_INPUT_CHECK(x >= (positive ? 1 : 0) && x < (1ll << 31), file, ": key '", k, "' = ", x,
                   " is out of range (allowed ", positive ? "1" : "0", "..2147483647)");
    return int(x);
  }
  int get_int(const char* k, int dflt, bool positive) const { return has(k) ? get_int(k, positive) : dflt; }
  int get_int(const char* k, int dflt) const = delete;  // an int default would bind to `positive`: say it
  double get_num(const char* k, double dflt) const {
    if (!has(k)) return dflt;
    MT_INPUT_CHECK(j[k].is_number(), file, ": key '", k, "' must be a number, got ", j[k].dump());
    return j[k].get<double>();
  }
  bool get_bool(const char* k, bool dflt) const {
    if (!has(k)) return dflt;
    MT_INPUT_CHECK(j[k].is_boolean(), file, ": key '", k, "' must be true or false, got ", j[k].dump());
    return j[k].get<bool>();
  }
};

// RoPE base of an HF config.json as transformers 5.x reads it (RotaryEmbeddingConfigMixin): the RoPE dict is
// `rope_scaling` (v4 spelling) when non-empty, else `rope_parameters` (v5); θ = that dict's rope_theta, else the
// top-level rope_theta, else the class default `dflt` (Mixtral 1e6; Qwen3-MoE, Llama, Mistral, Qwen3 1e4).
// Refuses scaled variants (rope_type / type other than "default") and per-layer-type RoPE dicts: only plain
// RoPE is implemented. (partial_rotary_factor is not read by the default RoPE of these classes: no effect.)
inline double hf_rope_theta(const JsonKeys& k, double dflt) {
  double theta = k.get_num("rope_theta", dflt);
  const bool scaling = k.has("rope_scaling") && !(k.j["rope_scaling"].is_object() && k.j["rope_scaling"].empty());
  const char* key = scaling ? "rope_scaling" : "rope_parameters";
  if (k.has(key)) {
    const nlohmann::json& rp = k.j[key];
    MT_INPUT_CHECK(rp.is_object(), k.file, ": key '", key, "' must be an object, got ", rp.dump());
    for (auto it = rp.begin(); it != rp.end(); ++it)
      MT_INPUT_CHECK(!it.value().is_object(), k.file, ": ", key, ".", it.key(), " = ", it.value().dump(),
                     " (RoPE per layer type) is not supported; allowed: one plain RoPE for every layer");
    const JsonKeys r{rp, k.file};
    theta = r.get_num("rope_theta", theta);
    const nlohmann::json type = rp.value("rope_type", rp.value("type", nlohmann::json("default")));
    MT_INPUT_CHECK(type == "default", k.file, ": ", key, " ", rp.dump(), " (rope_type ", type.dump(),
                   ") is not supported; allowed: rope_type \"default\" (plain RoPE) or no ", key,
                   " — scaled RoPE variants would change the model's math");
  }
  MT_INPUT_CHECK(theta > 0, k.file, ": rope_theta must be > 0, got ", theta);
  return theta;
}

// Index of the first NaN/Inf of x [n], −1 when all are finite (loaded weights are checked with it).
inline i64 first_non_finite(const float* x, i64 n) {
  for (i64 i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

inline std::string shape_str(const std::vector<i64>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace moe
