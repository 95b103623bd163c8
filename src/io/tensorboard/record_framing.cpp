// Owns TFRecord framing (record_framing.h); the one file of moe_tb that sees ISA-L (its CRC-32C).
#include "io/tensorboard/record_framing.h"

#include <isa-l/crc.h>

#include <climits>

#include "core/error.h"

namespace moe::tb {

namespace {

constexpr size_t kHeaderBytes = 12;  // length u64 + masked crc(length) u32
constexpr size_t kFooterBytes = 4;   // masked crc(data) u32

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t get_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  // ISA-L's crc32_iscsi(buf, len, state) continues a running state with neither pre- nor post-inversion: the
  // standard CRC-32C starts the state at 0xFFFFFFFF and inverts the end state. It takes an int length, so long
  // inputs go in chunks through the same running state.
  auto* p = static_cast<unsigned char*>(const_cast<void*>(data));
  unsigned int state = 0xFFFFFFFFu;
  while (n > 0) {
    const size_t chunk = n < size_t(INT_MAX) ? n : size_t(INT_MAX);
    state = crc32_iscsi(p, static_cast<int>(chunk), state);
    p += chunk;
    n -= chunk;
  }
  return ~state;
}

uint32_t masked_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

void append_record(std::string& out, std::string_view data) {
  const size_t start = out.size();
  put_le(out, data.size(), 8);
  put_le(out, masked_crc32c(crc32c(out.data() + start, 8)), 4);
  out.append(data.data(), data.size());
  put_le(out, masked_crc32c(crc32c(data.data(), data.size())), 4);
}

std::vector<std::string> split_records(std::string_view bytes, const std::string& what) {
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t index = records.size();
    MT_INPUT_CHECK(bytes.size() - pos >= kHeaderBytes, what, ": record ", index, " at byte ", pos,
                   " is truncated (", bytes.size() - pos, " bytes left, a record header needs ", kHeaderBytes, ")");
    const char* head = bytes.data() + pos;
    const uint64_t length = get_le(head, 8);
    const uint32_t length_crc = static_cast<uint32_t>(get_le(head + 8, 4));
    MT_INPUT_CHECK(length_crc == masked_crc32c(crc32c(head, 8)), what, ": record ", index, " at byte ", pos,
                   " fails its length CRC");
    const size_t left = bytes.size() - pos - kHeaderBytes;
    MT_INPUT_CHECK(left >= kFooterBytes && length <= left - kFooterBytes, what, ": record ", index, " at byte ", pos,
                   " is truncated (length ", length, ", ", left, " bytes follow its header)");
    const char* data = head + kHeaderBytes;
    const uint32_t data_crc = static_cast<uint32_t>(get_le(data + length, 4));
    MT_INPUT_CHECK(data_crc == masked_crc32c(crc32c(data, length)), what, ": record ", index, " at byte ", pos,
                   " fails its data CRC");
    records.emplace_back(data, length);
    pos += kHeaderBytes + length + kFooterBytes;
  }
  return records;
}

}  // namespace moe::tb
