// Owns GPT-2's byte-level alphabet: the reversible map between the 256 byte values and 256 printable code points that ByteLevel pre-tokenizers and decoders use.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace moe::tok {

class ByteAlphabet {
 public:
  // Bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves; the other 68 take U+0100.. in byte order.
  ByteAlphabet() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      cp_[size_t(b)] = self ? char32_t(b) : char32_t(256 + n++);
    }
    byte_of_.fill(-1);
    for (int b = 0; b < 256; ++b) {
      const char32_t cp = cp_[size_t(b)];
      byte_of_[cp] = int16_t(b);
      std::string& s = utf8_[size_t(b)];
      if (cp < 0x80) {
        s = std::string(1, char(cp));
      } else {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
      }
    }
  }
  // The UTF-8 text of byte b's code point (1 or 2 bytes).
  const std::string& utf8(unsigned char b) const { return utf8_[b]; }
  // The byte a code point stands for, or -1 when it is not in the alphabet.
  int byte_of(char32_t cp) const { return cp < byte_of_.size() ? byte_of_[cp] : -1; }

  static const ByteAlphabet& get() {
    static const ByteAlphabet a;
    return a;
  }

 private:
  std::array<char32_t, 256> cp_{};
  std::array<std::string, 256> utf8_;
  std::array<int16_t, 324> byte_of_{};  // code points up to U+0143
};

}  // namespace moe::tok
