// Owns the scaffolding shared by the unit tests: a self-removing temp directory and the BadInput-error expectations.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <system_error>

#include "core/error.h"

namespace moe::test {

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
