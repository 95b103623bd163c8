// Owns the decoder steps (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace) that turn tokens into text.
#include <string>
#include <vector>

#include "data/tokenizer/byte_level.h"
#include "data/tokenizer/parts.h"
#include "data/tokenizer/text.h"

namespace moe::tok {

namespace {
int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The byte of a "<0xXX>" token, or -1. The two characters are read as Rust's u8::from_str_radix(_, 16)
// reads them (an optional '+' then hex digits), since that is what the library's ByteFallback calls.
int fallback_byte(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  if (t[3] == '+') return hex_digit(t[4]);
  const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

void flush_bytes(std::string& bytes, std::vector<std::string>& out) {
  if (bytes.empty()) return;
  if (utf8_invalid_at(bytes) == std::string::npos) {
    out.push_back(bytes);
  } else {
    for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xEF\xBF\xBD");  // one U+FFFD per byte
  }
  bytes.clear();
}

std::vector<char32_t> code_points(const std::string& s) {
  std::vector<char32_t> cps;
  for (size_t i = 0; i < s.size();) {
    int len = 0;
    cps.push_back(utf8_at(s, i, &len));
    i += size_t(len);
  }
  return cps;
}
}  // namespace

void decode_chain(const std::vector<DecStep>& steps, std::vector<std::string>& tokens) {
  for (const DecStep& st : steps) {
    std::vector<std::string> out;
    switch (st.kind) {
      case DecKind::ByteLevel: {
        // Tokens made only of alphabet characters give their bytes; any other token its own UTF-8.
        const ByteAlphabet& ab = ByteAlphabet::get();
        std::string bytes;
        for (const std::string& t : tokens) {
          const size_t mark = bytes.size();
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            int len = 0;
            const int b = ab.byte_of(utf8_at(t, i, &len));
            i += size_t(len);
            if (b < 0) ok = false;
            else bytes += char(b);
          }
          if (!ok) {
            bytes.resize(mark);
            bytes += t;
          }
        }
        out.push_back(utf8_lossy(bytes));
        break;
      }
      case DecKind::Replace: {
        std::vector<std::pair<Span, bool>> m;
        for (const std::string& t : tokens) {
          find_matches(st.pattern, t, false, m);
          std::string r;
          for (const auto& [span, is_match] : m) {
            if (is_match) r += st.content;
            else r.append(t, span.first, span.second - span.first);
          }
          out.push_back(std::move(r));
        }
        break;
      }
      case DecKind::ByteFallback: {
        std::string bytes;
        for (std::string& t : tokens) {
          const int b = fallback_byte(t);
          if (b >= 0) {
            bytes += char(b);
            continue;
          }
          flush_bytes(bytes, out);
          out.push_back(std::move(t));
        }
        flush_bytes(bytes, out);
        break;
      }
      case DecKind::Fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        out.push_back(std::move(all));
        break;
      }
      case DecKind::Strip:
        for (const std::string& t : tokens) {
          const std::vector<char32_t> cps = code_points(t);
          size_t b = 0, e = cps.size();
          for (size_t i = 0; i < st.start && i < cps.size() && cps[i] == st.strip_char; ++i) b = i + 1;
          for (size_t i = 0; i < st.stop && i < cps.size() && cps[cps.size() - 1 - i] == st.strip_char; ++i)
            e = cps.size() - 1 - i;
          std::string r;
          for (size_t i = b; i < e; ++i) utf8_append(r, cps[i]);
          out.push_back(std::move(r));
        }
        break;
      case DecKind::Metaspace:
        for (size_t k = 0; k < tokens.size(); ++k) {
          const bool drop = k == 0 && st.scheme != PrependScheme::Never;
          std::string r;
          for (char32_t c : code_points(tokens[k])) {
            if (c == st.replacement) {
              if (!drop) r += ' ';
            } else {
              utf8_append(r, c);
            }
          }
          out.push_back(std::move(r));
        }
        break;
    }
    tokens.swap(out);
  }
}

}  // namespace moe::tok
