// Owns training data as one token stream and the window order of DESIGN §5 [C5.tokens, C5.order].
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

// How much of data.path check_token_file reads: only its size, or every id (streamed, nothing kept).
enum class DataScan { Size, Ids };

// The checks a run makes on data.path before anything is allocated (BadInput naming the file): set, exists,
// a regular file, size a multiple of the id width, at least one window of seq_len + 1 tokens, byte-level text
// needs vocab >= 256; with DataScan::Ids also every id < vocab. Returns the number of tokens. [C5.tokens]
// `key` names the file's config key in messages (eval.data reads its file like data.path).
i64 check_token_file(const DataConfig& d, int vocab, int seq_len, DataScan scan, const std::string& key = "data.path");

class TokenData {
 public:
  // Reads data.path (tokens: uint32/uint16 little-endian; text: bytes as byte-level tokens) and checks
  // every id < vocab and that at least one window of seq_len + 1 tokens exists (else BadInput).
  TokenData(const DataConfig& d, int vocab, int seq_len, uint64_t seed, const std::string& key = "data.path");

  i64 num_windows() const { return n_windows_; }
  i64 num_tokens() const { return i64(tokens_.size()); }

  // Window i (global sample index, any size): inputs = tokens[w·L, w·L+L), targets shifted by one,
  // w = i mod n (or the per-epoch permutation of it when data.shuffle).  [C5.tokens]
  void window(i64 i, int32_t* inputs, int32_t* targets) const;

 private:
  std::vector<int32_t> tokens_;
  int L_;
  i64 n_windows_ = 0;
  bool shuffle_;
  uint64_t seed_;
  mutable i64 perm_epoch_ = -1;
  mutable std::vector<i64> perm_;
};

}  // namespace moe
