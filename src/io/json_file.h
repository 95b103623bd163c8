// Owns the small helpers shared by the HF readers (hf_model, upcycle): JSON files and typed keys, RoPE base, regular-file test, non-finite scan, shape text.
#pragma once
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
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

// Deepest JSON nesting moe-train accepts. HF config.json files nest 3-4 levels, safetensors headers 3; the
// bound keeps every recursive walk (dump, destruction, our own checks) far from the stack's end.
constexpr int kMaxJsonDepth = 64;
// config.json / index.json are a few MB at most (an index lists every tensor once).
constexpr size_t kMaxJsonFileBytes = size_t(64) << 20;

// True when no '[' / '{' of the JSON text [b, e) is nested deeper than max_depth (brackets inside strings do
// not count). A linear pre-scan run before parsing; malformed text is left to the parser to name.
inline bool json_depth_within(const char* b, const char* e, int max_depth) {
  int depth = 0;
  bool in_str = false;
  for (const char* p = b; p < e; ++p) {
    const char c = *p;
    if (in_str) {
      if (c == '\\') ++p;  // skip the escaped character
      else if (c == '"') in_str = false;
    } else if (c == '"') {
      in_str = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// At most max_chars characters of s for a message (longer text ends in "...").
inline std::string brief_text(const std::string& s, size_t max_chars = 80) {
  return s.size() <= max_chars ? s : s.substr(0, max_chars) + "...";
}

namespace detail {
inline void json_brief_into(const nlohmann::json& v, std::string& out, size_t max_chars) {
  if (out.size() > max_chars) return;
  if (v.is_array() || v.is_object()) {
    out += v.is_array() ? '[' : '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out.size() <= max_chars; ++it) {
      if (!first) out += ", ";
      first = false;
      if (v.is_object()) out += nlohmann::json(brief_text(it.key(), max_chars)).dump() + ": ";
      json_brief_into(it.value(), out, max_chars);
    }
    out += v.is_array() ? ']' : '}';
  } else if (v.is_string()) {
    out += nlohmann::json(brief_text(v.get_ref<const std::string&>(), max_chars)).dump();
  } else {
    out += v.dump();
  }
}
}  // namespace detail

// JSON text of v for a message, at most ~max_chars characters (never the whole of a huge value).
inline std::string json_brief(const nlohmann::json& v, size_t max_chars = 80) {
  std::string out;
  detail::json_brief_into(v, out, max_chars);
  return brief_text(out, max_chars);
}

// Parses JSON text [b, e) from `what` (a file name, for messages), refusing nesting deeper than kMaxJsonDepth;
// BadInput naming `what` when the text is not JSON. `cb` as nlohmann::json::parse's callback (may be empty).
inline nlohmann::json parse_json_text(const char* b, const char* e, const std::string& what,
                                      nlohmann::json::parser_callback_t cb = nullptr) {
  MT_INPUT_CHECK(json_depth_within(b, e, kMaxJsonDepth), what, ": invalid JSON (nested deeper than ",
                 kMaxJsonDepth, " levels)");
  try {
    return nlohmann::json::parse(b, e, cb);
  } catch (const nlohmann::json::exception& ex) {
    MT_INPUT_FAIL(what, ": invalid JSON (", brief_text(ex.what(), 200), ")");
  }
}

// Parses a JSON file; BadInput naming the file when it is not a readable regular file of at most
// kMaxJsonFileBytes, nests deeper than kMaxJsonDepth, or is not JSON.
inline nlohmann::json read_json_file(const std::string& path) {
  struct stat st;
  MT_INPUT_CHECK(::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode), "cannot read ", path,
                 ": not a regular file");
  MT_INPUT_CHECK(uint64_t(st.st_size) <= kMaxJsonFileBytes, path, ": ", uint64_t(st.st_size),
                 " bytes is too large for a JSON config (limit ", kMaxJsonFileBytes, ")");
  std::ifstream in(path, std::ios::binary);
  MT_INPUT_CHECK(in.good(), "cannot read ", path);
  std::string text(size_t(st.st_size), '\0');
  in.read(text.data(), std::streamsize(text.size()));
  text.resize(size_t(in.gcount()));
  return parse_json_text(text.data(), text.data() + text.size(), path);
}

// Typed access to the keys of a JSON config (config.json); every failure names the file and the key.
struct JsonKeys {
  const nlohmann::json& j;
  const std::string& file;
  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  int get_int(const char* k, bool positive = true) const {
    MT_INPUT_CHECK(has(k), file, ": missing required key '", k, "'");
    const nlohmann::json& v = j[k];
    MT_INPUT_CHECK(v.is_number_integer(), file, ": key '", k, "' must be an integer, got ", json_brief(v));
    const long long x = v.is_number_unsigned() && v.get<uint64_t>() >= (1ull << 31) ? (1ll << 31) : v.get<long long>();
    MT_INPUT_CHECK(x >= (positive ? 1 : 0) && x < (1ll << 31), file, ": key '", k, "' = ", json_brief(v),
                   " is out of range (allowed ", positive ? "1" : "0", "..2147483647)");
    return int(x);
  }
  int get_int(const char* k, int dflt, bool positive) const { return has(k) ? get_int(k, positive) : dflt; }
  int get_int(const char* k, int dflt) const = delete;  // an int default would bind to `positive`: say it
  double get_num(const char* k, double dflt) const {
    if (!has(k)) return dflt;
    MT_INPUT_CHECK(j[k].is_number() && std::isfinite(j[k].get<double>()), file, ": key '", k,
                   "' must be a finite number, got ", json_brief(j[k]));
    return j[k].get<double>();
  }
  bool get_bool(const char* k, bool dflt) const {
    if (!has(k)) return dflt;
    MT_INPUT_CHECK(j[k].is_boolean(), file, ": key '", k, "' must be true or false, got ", json_brief(j[k]));
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
    MT_INPUT_CHECK(rp.is_object(), k.file, ": key '", key, "' must be an object, got ", json_brief(rp));
    for (auto it = rp.begin(); it != rp.end(); ++it)
      MT_INPUT_CHECK(!it.value().is_object(), k.file, ": ", key, ".", brief_text(it.key()), " = ", json_brief(it.value()),
                     " (RoPE per layer type) is not supported; allowed: one plain RoPE for every layer");
    const JsonKeys r{rp, k.file};
    theta = r.get_num("rope_theta", theta);
    const nlohmann::json type = rp.value("rope_type", rp.value("type", nlohmann::json("default")));
    MT_INPUT_CHECK(type == "default", k.file, ": ", key, " ", json_brief(rp), " (rope_type ", json_brief(type),
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
