// Owns TFRecord framing of TensorBoard event files (DESIGN §6 log.tensorboard): CRC-32C, the masked CRC, and
// records written and read back as [length u64 LE][masked crc(length) u32 LE][data][masked crc(data) u32 LE].
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::tb {

// CRC-32C (Castagnoli polynomial, reflected, initial value and final xor 0xFFFFFFFF) of bytes [data, data + n).
// Check value: crc32c("123456789") = 0xE3069283.
uint32_t crc32c(const void* data, size_t n);

// TFRecord's masked CRC: rotate right by 15 bits, then add 0xa282ead8 (uint32 arithmetic). The mask keeps a CRC
// of bytes that themselves hold CRCs from being degenerate.
uint32_t masked_crc32c(uint32_t crc);

// Appends one framed record holding `data` to `out` (16 + data.size() bytes).
void append_record(std::string& out, std::string_view data);

// The records of a whole file's bytes, in order, each CRC verified. A truncated tail or a CRC mismatch throws
// BadInput naming `what` (the file), the record index and its byte offset.
std::vector<std::string> split_records(std::string_view bytes, const std::string& what);

}  // namespace moe::tb
