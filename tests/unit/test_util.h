// Owns the scaffolding shared by the unit tests: a self-removing temp directory, a random token file and the BadInput-error expectations.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>

#include "core/error.h"

namespace moe::test {

// dir/tokens.bin: n little-endian uint32 ids, uniform below vocab from mt19937(seed); written once, then reused.
// Returns its path.
inline std::string random_token_file(const std::filesystem::path& dir, int n = 3000, uint32_t vocab = 64,
                                     uint32_t seed = 5) {
  const std::filesystem::path data = dir / "tokens.bin";
  if (!std::filesystem::exists(data)) {
    std::mt19937 rng(seed);
    std::ofstream f(data, std::ios::binary);
    for (int i = 0; i < n; ++i) {
      const uint32_t v = rng() % vocab;
      f.write(reinterpret_cast<const char*>(&v), 4);
    }
  }
  return data.string();
}

// A fresh directory /tmp/moe_test_XXXXXX (mkdtemp) removed with its contents on destruction.
// Throws std::runtime_error when it cannot be made.
class TmpDir {
 public:
  TmpDir() {
    char tmpl[] = "/tmp/moe_test_XXXXXX";
    char* p = mkdtemp(tmpl);
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TmpDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TmpDir(const TmpDir&) = delete;
  TmpDir& operator=(const TmpDir&) = delete;

  std::string operator/(const std::string& f) const { return path_ + "/" + f; }
  const std::string& str() const { return path_; }
  std::filesystem::path path() const { return path_; }

 private:
  std::string path_;
};

// Runs fn; expects a moe::Error of kind BadInput (exit code 2) whose message contains every one of `parts`.
inline void expect_bad_input(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput) << e.what();
    EXPECT_EQ(e.exit_code(), 2);
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message lacks '" << p << "': " << e.what();
    return;
  }
  ADD_FAILURE() << "no moe::Error thrown";
}

// Runs fn; expects a moe::Error of kind BadInput (exit code 2) and returns its message ("" when none was thrown).
inline std::string bad_input(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput) << e.what();
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  ADD_FAILURE() << "expected a BadInput error";
  return "";
}

}  // namespace moe::test
