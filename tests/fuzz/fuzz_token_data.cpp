// Fuzz harness: any bytes as a token/text file under both token dtypes → TokenData, then windows read from it.
#include <vector>

#include "data/token_data.h"
#include "fuzz_common.h"

// Input: byte 0 = options (bit 0: uint16 else uint32, bit 1: text format, bit 2: shuffle), byte 1 = seq_len - 1
// (1..64), bytes 2-3 = vocab - 1 (little-endian, 1..65536), the rest = the file's bytes.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  moe::DataConfig d;
  d.format = (data[0] & 2) ? moe::DataFormat::Text : moe::DataFormat::Tokens;
  d.dtype = (data[0] & 1) ? moe::TokenDtype::U16 : moe::TokenDtype::U32;
  d.shuffle = (data[0] & 4) != 0;
  const int seq_len = 1 + (data[1] & 63);
  const int vocab = 1 + int(data[2] | (data[3] << 8));
  d.path = moe::fuzz::write_scratch("tokens.bin", data + 4, size - 4);
  return moe::fuzz::guarded([&] {
    const moe::TokenData t(d, vocab, seq_len, /*seed=*/7);
    std::vector<int32_t> in(static_cast<size_t>(seq_len)), tg(static_cast<size_t>(seq_len));
    const long long n = t.num_windows();
    for (long long i : {0LL, n - 1, n, 3 * n + 1}) {
      t.window(i, in.data(), tg.data());
      for (int k = 0; k < seq_len; ++k)
        if (in[size_t(k)] < 0 || in[size_t(k)] >= vocab || tg[size_t(k)] < 0 || tg[size_t(k)] >= vocab) std::abort();
    }
  });
}
