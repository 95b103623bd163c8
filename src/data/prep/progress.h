// Owns the progress line of `moe-prep build` on stderr: bytes read / total, docs/s, ETA; refreshed in place a few times per second on a terminal, one line about every 10 s otherwise (DESIGN §6 C6.prep).
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>

namespace moe {

class Progress {
 public:
  // total_bytes 0: unknown (no percentage or ETA).
  Progress(std::FILE* out, uint64_t total_bytes);
  // Prints when due (at most every 0.25 s on a TTY, every 10 s otherwise).
  void update(uint64_t bytes, uint64_t docs);
  // Ends an in-place line (TTY) before other messages or the end.
  void break_line();
  double seconds() const;

 private:
  void print(uint64_t bytes, uint64_t docs);
  std::FILE* out_;
  uint64_t total_;
  bool tty_;
  bool dirty_ = false;  // an in-place line is on screen
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace moe
