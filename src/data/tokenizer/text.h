// Owns the UTF-8 and Unicode helpers of the HF tokenizer (DESIGN §6 moe-prep): validation, lossy decoding, the character classes the library's added-token rules use, and NFC (ICU is seen only by text.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moe::tok {

// Byte length of the UTF-8 sequence whose lead byte is c (1..4); meaningful on valid UTF-8 only.
inline int utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

// The code point starting at s[i] of valid UTF-8; *len receives its byte length.
inline char32_t utf8_at(std::string_view s, size_t i, int* len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const int n = utf8_len(p[0]);
  *len = n;
  switch (n) {
    case 1: return p[0];
    case 2: return char32_t(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
    case 3: return char32_t(p[0] & 0x0F) << 12 | char32_t(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
    default: return char32_t(p[0] & 0x07) << 18 | char32_t(p[1] & 0x3F) << 12 | char32_t(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
  }
}

// The code point that ends at s[end) (valid UTF-8, end > 0).
char32_t utf8_last(std::string_view s, size_t end);

void utf8_append(std::string& out, char32_t cp);

// Byte offset of the first byte that is not part of valid UTF-8 (overlong forms, surrogates and code points
// past U+10FFFF are invalid), or npos when all of s is valid.
size_t utf8_invalid_at(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal invalid prefix of a sequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Unicode White_Space (the `\s` of Rust's regex crate and of Oniguruma).
bool is_white_space(char32_t c);
// `\w` of Rust's regex crate: Alphabetic, Mark, Decimal_Number, Connector_Punctuation or Join_Control.
bool is_word_char(char32_t c);

// Unicode NFC of valid UTF-8 s (ICU). Text whose code points are all below U+0300 is returned as is.
std::string nfc(std::string_view s);

}  // namespace moe::tok
