// Owns LineReader: batched '\n' line splitting over a FILE* with a bounded buffer (DESIGN §6 moe-prep).
#include "data/prep/line_reader.h"

#include <algorithm>

namespace moe {

void LineReader::read_block() {
  const size_t block = std::min<size_t>(max_bytes_, size_t(4) << 20);
  const size_t old = buf_.size();
  buf_.resize(old + block);
  const size_t got = std::fread(buf_.data() + old, 1, block, in_);
  buf_.resize(old + got);
  if (got == 0) {
    eof_ = true;
    error_ = std::ferror(in_) != 0;
  }
}

bool LineReader::next_batch(std::vector<std::string_view>& lines) {
  lines.clear();
  buf_.erase(0, pos_);
  pos_ = 0;
  for (;;) {
    while (!eof_ && buf_.size() < max_bytes_) read_block();
    // Views are taken only now: the buffer does not grow again before the caller is done with them.
    size_t p = 0;
    while (lines.size() < max_lines_) {
      const size_t nl = buf_.find('\n', p);
      if (nl == std::string::npos) {
        if (eof_ && p < buf_.size()) {
          lines.emplace_back(buf_.data() + p, buf_.size() - p);
          p = buf_.size();
        }
        break;
      }
      lines.emplace_back(buf_.data() + p, nl - p);
      p = nl + 1;
    }
    pos_ = p;
    done_ += p;
    if (!lines.empty() || eof_) return !lines.empty();
    read_block();  // one line longer than the buffer: read on until its end
  }
}

}  // namespace moe
