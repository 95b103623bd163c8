// Owns what every parser fuzz harness shares: the failure policy (BadInput is the only allowed failure) and scratch files.
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "core/error.h"

namespace moe::fuzz {

// Longest error message a parser may produce: messages quote names and values, never whole inputs.
constexpr size_t kMaxMessage = 4096;

// Runs body(); a moe::Error(BadInput) with a bounded message is the only acceptable failure. Anything else
// (another error kind, another exception, an oversized message) aborts, which libFuzzer records as a crash.
template <class Body>
int guarded(Body body) {
  try {
    body();
  } catch (const moe::Error& e) {
    if (e.kind() != moe::ErrorKind::BadInput) {
      std::fprintf(stderr, "fuzz: moe::Error of kind %d (not BadInput): %.2000s\n", int(e.kind()), e.what());
      std::abort();
    }
    const size_t n = std::strlen(e.what());
    if (n == 0 || n > kMaxMessage) {
      std::fprintf(stderr, "fuzz: BadInput message of %zu chars (allowed 1..%zu): %.300s\n", n, kMaxMessage, e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: escaped std::exception: %.2000s\n", e.what());
    std::abort();
  }
  return 0;
}

// A private scratch directory for this process (tmpfs when there is one), created on first use.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
    std::string t = std::string(base) + "/moe-fuzz.XXXXXX";
    if (!mkdtemp(t.data())) {
      std::perror("fuzz: mkdtemp");
      std::abort();
    }
    return t;
  }();
  return dir;
}

// Writes bytes to scratch_dir()/name (replacing it) and returns the path.
inline std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror("fuzz: writing a scratch file");
    std::abort();
  }
  return path;
}

}  // namespace moe::fuzz
