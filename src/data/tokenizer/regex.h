// Owns the tokenizer's regex engine seam: patterns written for Oniguruma (the library's engine) run on PCRE2 in UTF + UCP mode, JIT-compiled when available (PCRE2 is seen only by regex.cpp).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::tok {

using Span = std::pair<size_t, size_t>;  // [start, end) byte offsets

class Regex {
 public:
  // Compiles an Oniguruma-syntax pattern. `where` names the file and component for messages. Throws BadInput
  // when PCRE2 rejects it or it uses an escape whose Unicode meaning differs between the two engines
  // (\w \W \b \B \h \H, \S inside a class). `\s` is rewritten to Unicode White_Space (Oniguruma's \s; PCRE2's
  // also holds U+180E) and `\uHHHH` to `\x{HHHH}`.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every match in s (valid UTF-8) to out, leftmost first, non-overlapping, like the onig crate's
  // find_iter: an empty match right where the previous match ended is skipped by advancing one character.
  void find_all(std::string_view s, std::vector<Span>& out) const;

  // The PCRE2 pattern actually compiled (after the rewrites above).
  const std::string& pcre_pattern() const { return pcre_pattern_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string pcre_pattern_;
};

// The rewrite step of Regex on its own (exposed for tests): Oniguruma pattern -> PCRE2 pattern.
std::string onig_to_pcre2(const std::string& pattern, const std::string& where);

}  // namespace moe::tok
