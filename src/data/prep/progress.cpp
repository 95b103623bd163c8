// Owns the throttled progress line of `moe-prep build` (DESIGN §6 C6.prep).
#include "data/prep/progress.h"

#include <unistd.h>

namespace moe {

Progress::Progress(std::FILE* out, uint64_t total_bytes)
    : out_(out), total_(total_bytes), tty_(::isatty(::fileno(out)) != 0) {
  start_ = last_ = std::chrono::steady_clock::now();
}

double Progress::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(uint64_t bytes, uint64_t docs) {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < (tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(10000))) return;
  last_ = now;
  print(bytes, docs);
}

void Progress::print(uint64_t bytes, uint64_t docs) {
  const double s = seconds();
  const double mb = double(bytes) / 1e6, rate = s > 0 ? double(docs) / s : 0;
  if (tty_) std::fputs("\r\033[K", out_);
  std::fprintf(out_, "moe-prep build: %.1f", mb);
  if (total_) std::fprintf(out_, "/%.1f MB (%.0f%%)", double(total_) / 1e6, 100.0 * double(bytes) / double(total_));
  else std::fputs(" MB", out_);
  std::fprintf(out_, ", %llu docs, %.0f docs/s, %.1f MB/s", static_cast<unsigned long long>(docs), rate,
               s > 0 ? mb / s : 0.0);
  if (total_ && bytes > 0 && bytes < total_) {
    const long eta = long(s * double(total_ - bytes) / double(bytes));
    std::fprintf(out_, ", ETA %ld:%02ld:%02ld", eta / 3600, eta / 60 % 60, eta % 60);
  }
  if (tty_) dirty_ = true;
  else std::fputc('\n', out_);
  std::fflush(out_);
}

void Progress::break_line() {
  if (!dirty_) return;
  std::fputc('\n', out_);
  dirty_ = false;
}

}  // namespace moe
