// Owns reading a whole regular file into a string for the tokenizer library (tokenizer.json, tokenizer_config.json, chat templates).
#pragma once
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"

namespace moe::tok {

// False when `path` is not a regular file (absent, a directory, ...); BadInput when it is one but cannot be read.
inline bool read_regular_file(const std::string& path, std::string& out) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::ifstream in(path, std::ios::binary);
  MT_INPUT_CHECK(in.good(), "cannot read ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

}  // namespace moe::tok
