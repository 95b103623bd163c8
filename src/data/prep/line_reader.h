// Owns reading a stream as '\n'-terminated lines in bounded batches (moe-prep encode/decode/build, DESIGN §6): memory stays at about one batch whatever the input size.
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

// Lines are split at '\n' only (a '\r' stays in the line); the last line may lack its '\n'. A batch holds up to
// max_lines lines and about max_bytes bytes (more only when a single line is longer).
class LineReader {
 public:
  explicit LineReader(std::FILE* in, size_t max_bytes = size_t(16) << 20, size_t max_lines = size_t(1) << 15)
      : in_(in), max_bytes_(max_bytes), max_lines_(max_lines) {}

  // Fills `lines` with views into an internal buffer, valid until the next call; false at the end of input.
  // A read error ends the input too: check error() after the last batch.
  bool next_batch(std::vector<std::string_view>& lines);

  // Bytes of input handed out as lines so far (with their '\n').
  size_t bytes_done() const { return done_; }
  bool error() const { return error_; }

 private:
  void read_block();
  std::FILE* in_;
  size_t max_bytes_, max_lines_;
  std::string buf_;
  size_t pos_ = 0, done_ = 0;
  bool eof_ = false, error_ = false;
};

}  // namespace moe
