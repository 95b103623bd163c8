// Owns the small file helpers shared by the HF readers (hf_model, upcycle): JSON files, regular-file test, shape text.
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

inline std::string shape_str(const std::vector<i64>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace moe
