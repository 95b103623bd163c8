// Owns the small helpers shared by the HF readers (hf_model, upcycle): JSON files and typed keys, RoPE base, regular-file test, shape text.
#pragma once
#include <sys/stat.h>

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

// RoPE base of an HF config.json in either transformers spelling (rope_theta, v5 rope_parameters), refusing
// scaled variants (rope_scaling / rope_type other than default): only plain RoPE is implemented.
inline double hf_rope_theta(const JsonKeys& k, double dflt) {
  double theta = k.get_num("rope_theta", dflt);
  if (k.has("rope_parameters")) {
    const nlohmann::json& rp = k.j["rope_parameters"];
    MT_INPUT_CHECK(rp.is_object(), k.file, ": key 'rope_parameters' must be an object, got ", rp.dump());
    const JsonKeys r{rp, k.file};
    theta = r.get_num("rope_theta", theta);
    if (r.has("rope_type"))
      MT_INPUT_CHECK(rp["rope_type"] == "default", k.file, ": rope_parameters.rope_type ", rp["rope_type"].dump(),
                     " is not supported; allowed: \"default\" (plain RoPE)");
  }
  MT_INPUT_CHECK(theta > 0, k.file, ": rope_theta must be > 0, got ", theta);
  if (k.has("rope_scaling")) {  // v4 spelling of scaled RoPE variants
    const nlohmann::json& rs = k.j["rope_scaling"];
    const nlohmann::json type = rs.is_object() ? rs.value("rope_type", rs.value("type", nlohmann::json("default")))
                                               : nlohmann::json();
    MT_INPUT_CHECK(type == "default", k.file, ": rope_scaling ", rs.dump(),
                   " is not supported; allowed: null or rope_type \"default\" (plain RoPE)");
  }
  return theta;
}

inline std::string shape_str(const std::vector<i64>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace moe
