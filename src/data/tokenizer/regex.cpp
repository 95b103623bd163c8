// Owns the PCRE2 wrapper of the tokenizer: Oniguruma→PCRE2 pattern rewrite, JIT compile, find_iter semantics.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tokenizer/regex.h"

#include <pcre2.h>

#include "core/error.h"
#include "data/tokenizer/text.h"

namespace moe::tok {

namespace {
// Unicode White_Space as a class body: what Oniguruma's `\s` matches in UTF-8 mode.
constexpr const char* kWhiteSpaceBody =
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
}  // namespace

std::string onig_to_pcre2(const std::string& p, const std::string& where) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t class_start = 0;  // index in p just after '[' or '[^' of the open class
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      MT_INPUT_CHECK(i + 1 < p.size(), where, ": regex '", p, "' ends with a lone backslash");
      const char e = p[i + 1];
      ++i;
      if (e == 's') {
        if (in_class) out += kWhiteSpaceBody;
        else out += std::string("[") + kWhiteSpaceBody + "]";
      } else if (e == 'S') {
        MT_INPUT_CHECK(!in_class, where, ": regex '", p,
                       "' uses \\S inside a character class, which is not supported (write the class without it)");
        out += std::string("[^") + kWhiteSpaceBody + "]";
      } else if (e == 'w' || e == 'W' || e == 'b' || e == 'B' || e == 'h' || e == 'H') {
        MT_INPUT_FAIL(where, ": regex '", p, "' uses \\", e,
                      ", whose meaning differs between Oniguruma (the tokenizers library) and PCRE2; not supported");
      } else if (e == 'u' && i + 4 < p.size() && is_hex(p[i + 1]) && is_hex(p[i + 2]) && is_hex(p[i + 3]) &&
                 is_hex(p[i + 4])) {
        out += "\\x{" + p.substr(i + 1, 4) + "}";
        i += 4;
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out += '^';
        ++i;
      }
      class_start = i + 1;
      continue;
    }
    if (in_class) {
      if (c == '[') {
        MT_INPUT_CHECK(!(i + 1 < p.size() && p[i + 1] == ':'), where, ": regex '", p,
                       "' uses a POSIX bracket class ([:name:]), which is not supported");
        MT_INPUT_FAIL(where, ": regex '", p, "' nests a character class, which is not supported");
      }
      if (c == ']' && i != class_start) in_class = false;
    }
    out += c;
  }
  MT_INPUT_CHECK(!in_class, where, ": regex '", p, "' has an unterminated character class");
  return out;
}

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

Regex::Regex(const std::string& pattern, const std::string& where) : impl_(std::make_unique<Impl>()) {
  pcre_pattern_ = onig_to_pcre2(pattern, where);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre_pattern_.data()), pcre_pattern_.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &err_off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    MT_INPUT_FAIL(where, ": regex '", pattern, "' does not compile (PCRE2: ", reinterpret_cast<const char*>(msg),
                  " at offset ", err_off, ")");
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

namespace {
// One match-data block per thread: only the whole-match offsets are read (ovector pair 0), which PCRE2 fills
// even when the pattern has more groups than the block holds.
pcre2_match_data* thread_match_data() {
  struct Holder {
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(md); }
  };
  thread_local Holder h;
  return h.md;
}
}  // namespace

void Regex::find_all(std::string_view s, std::vector<Span>& out) const {
  // The onig crate's FindMatches: after a match the search resumes at its end; an empty match moves the
  // resume point one character on, and is dropped when it is the first empty match after a non-empty one.
  pcre2_match_data* md = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  const size_t n = s.size();
  size_t pos = 0;
  bool skip_next_empty = false;
  while (pos <= n) {
    int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, n, pos, 0, md, nullptr)
                        : pcre2_match(impl_->code, subject, n, pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its backtracking frames on the heap
      rc = pcre2_match(impl_->code, subject, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      MT_INPUT_FAIL("regex match failed (PCRE2: ", reinterpret_cast<const char*>(msg), ") on a text of ", n,
                    " bytes");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t st = ov[0], en = ov[1];
    pos = en;
    if (st == en) {
      int len = 1;
      if (en < n) utf8_at(s, en, &len);
      pos += size_t(len);
      if (skip_next_empty) {
        skip_next_empty = false;
        continue;
      }
    } else {
      skip_next_empty = true;
    }
    out.emplace_back(st, en);
  }
}

}  // namespace moe::tok
