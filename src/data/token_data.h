// Owns training data as memory-mapped token sources (files or moe-prep build directories), the window order of
// DESIGN §5 [C5.tokens, C5.order], data.mix interleaving and data.mask_prompt targets.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/dims.h"

namespace moe {

// How much of a source check_token_file reads: only its size, or every id (streamed, nothing kept).
enum class DataScan { Size, Ids };

// The label of a target that does not count in the loss (HF's -100): prompt tokens under data.mask_prompt.
constexpr int32_t kMaskedTarget = -100;

// The checks a run makes on one source before anything is allocated (BadInput naming `key` and the path): set,
// exists, a regular file (size a multiple of the id width; byte-level text needs vocab >= 256) or a moe-prep build
// directory (meta.json format_version 1, tokens.bin uint32 and loss_mask.bin of meta.json's num_tokens), at least
// one window of seq_len + 1 tokens; with DataScan::Ids also every id < vocab. Returns the number of tokens. [C5.tokens]
i64 check_token_file(const DataConfig& d, const std::string& path, int vocab, int seq_len, DataScan scan,
                     const std::string& key);
// Every source of d (data.path, or each data.mix path) as above, plus the combination rules: data.path and data.mix
// exclude each other, data.mask_prompt needs every source to be a moe-prep build directory. Returns all tokens.
i64 check_data_sources(const DataConfig& d, int vocab, int seq_len, DataScan scan);

class TokenSource;

class TokenData {
 public:
  // Maps the sources of d (data.path, or the data.mix paths; `key` names the config key in messages), checks every
  // id < vocab and at least one window of seq_len + 1 tokens per source (else BadInput). plan_samples: the global
  // sample indices the run will ask for (steps · global batch); the data.mix schedule is laid out for them here, so
  // window() allocates nothing.
  TokenData(const DataConfig& d, int vocab, int seq_len, uint64_t seed, const std::string& key = "data.path",
            i64 plan_samples = 0);
  ~TokenData();
  TokenData(const TokenData&) = delete;
  TokenData& operator=(const TokenData&) = delete;

  i64 num_windows() const;  // summed over the sources
  i64 num_tokens() const;
  // data.mask_prompt with loss masks, or data.reset_attention: some targets are kMaskedTarget.
  bool masks_targets() const { return mask_prompt_ || reset_attention_; }
  // data.reset_attention: windows carry where each token's document starts (needs docs.bin).
  bool packed_documents() const { return reset_attention_; }

  // Global sample i (any size): inputs = tokens[w·L, w·L+L) of its source, targets shifted by one (kMaskedTarget
  // where data.mask_prompt's loss mask is 0); w = k mod n_s for the source's k-th sample (or that epoch's
  // permutation when data.shuffle). Returns how many targets count. With data.reset_attention, doc_start [L] (if not
  // null) gets where each input's document starts in the window (0 for a document begun before it), and the target
  // of a document's last token (the next document's first token) is kMaskedTarget.  [C5.tokens C5.order C5.packing]
  i64 window(i64 i, int32_t* inputs, int32_t* targets, int32_t* doc_start = nullptr) const;
  // The targets of window i that count (= window()'s return), without copying the window.
  i64 count_targets(i64 i) const;
  // data.mix: sample i comes from source s as its k-th sample (s = 0, k = i with one source). The sequence is
  // deterministic and random-access: u_i = frac((i + 1)·φ), φ = (√5 − 1)/2, picks the first source whose cumulative
  // weight share exceeds u_i (a low-discrepancy sequence: every prefix is within a few samples of the weights).
  std::pair<int, i64> locate(i64 i) const;

 private:
  int pick(i64 i) const;
  i64 scan(i64 i, int32_t* inputs, int32_t* targets, int32_t* doc_start) const;
  i64 source_window(int s, i64 k) const;

  std::vector<std::unique_ptr<TokenSource>> sources_;
  std::vector<double> cumulative_;  // [S] cumulative normalized weights (last = 1)
  int L_;
  bool shuffle_, mask_prompt_, reset_attention_;
  uint64_t seed_;
  static constexpr i64 kBlock = 4096;
  std::vector<i64> block_counts_;  // [(plan_samples / kBlock + 1) · S]: samples of each source before block b
  mutable std::vector<i64> perm_epoch_;          // [S]
  mutable std::vector<std::vector<i64>> perm_;   // [S][n_s]
};

}  // namespace moe
