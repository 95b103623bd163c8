// Owns UTF-8 validation/lossy decoding and the ICU-backed Unicode queries of the tokenizer (the only ICU user).
#include "data/tokenizer/text.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include "core/error.h"

namespace moe::tok {

char32_t utf8_last(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  int len = 0;
  return utf8_at(s, i, &len);
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

namespace {
inline bool is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the valid UTF-8 sequence at s[i], or -(bytes that still look like a prefix of one) when it is
// invalid: the "maximal subpart" rule of Unicode §3.9 that Rust's Utf8Chunks follows (at least 1 byte).
int sequence_at(const unsigned char* p, size_t n) {
  const unsigned char b = p[0];
  if (b < 0x80) return 1;
  int width = b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
  if (width == 0) return -1;
  if (n < 2) return -1;
  const unsigned char c1 = p[1];
  bool ok1;
  if (width == 2) ok1 = is_cont(c1);
  else if (b == 0xE0) ok1 = c1 >= 0xA0 && c1 <= 0xBF;
  else if (b == 0xED) ok1 = c1 >= 0x80 && c1 <= 0x9F;
  else if (width == 3) ok1 = is_cont(c1);
  else if (b == 0xF0) ok1 = c1 >= 0x90 && c1 <= 0xBF;
  else if (b == 0xF4) ok1 = c1 >= 0x80 && c1 <= 0x8F;
  else ok1 = is_cont(c1);
  if (!ok1) return -1;
  if (width == 2) return 2;
  if (n < 3 || !is_cont(p[2])) return -2;
  if (width == 3) return 3;
  if (n < 4 || !is_cont(p[3])) return -3;
  return 4;
}
}  // namespace

size_t utf8_invalid_at(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const int len = sequence_at(p + i, n - i);
    if (len < 0) return i;
    i += size_t(len);
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  if (utf8_invalid_at(bytes) == std::string_view::npos) return std::string(bytes);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  std::string out;
  out.reserve(n + 8);
  size_t i = 0;
  while (i < n) {
    const int len = p[i] < 0x80 ? 1 : sequence_at(p + i, n - i);
    if (len > 0) {
      out.append(bytes.data() + i, size_t(len));
      i += size_t(len);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      i += size_t(-len);
    }
  }
  return out;
}

bool is_white_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(UChar32(c), UCHAR_WHITE_SPACE);
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  const UChar32 u = UChar32(c);
  if (u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL)) return true;
  switch (u_charType(u)) {
    case U_NON_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

std::string nfc(std::string_view s) {
  // Every code point below U+0300 is NFC-stable and none combines with what precedes it (combining marks
  // start at U+0300, whose UTF-8 lead byte is 0xCC), so such text is already in NFC.
  bool simple = true;
  for (unsigned char c : s)
    if (c >= 0xCC) {
      simple = false;
      break;
    }
  if (simple) return std::string(s);
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n2 = icu::Normalizer2::getNFCInstance(err);
  MT_CHECK(U_SUCCESS(err), "ICU NFC instance: ", u_errorName(err));
  const icu::StringPiece piece(s.data(), int32_t(s.size()));
  if (n2->isNormalizedUTF8(piece, err) && U_SUCCESS(err)) return std::string(s);
  err = U_ZERO_ERROR;
  std::string out;
  out.reserve(s.size());
  icu::StringByteSink<std::string> sink(&out);
  n2->normalizeUTF8(0, piece, sink, nullptr, err);
  MT_CHECK(U_SUCCESS(err), "ICU NFC normalization: ", u_errorName(err));
  return out;
}

}  // namespace moe::tok
