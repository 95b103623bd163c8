// Owns the BPE model of an HF tokenizer.json (`model.type: BPE`): vocabulary, merge ranks, byte fallback, unknown-token fusing, ignore_merges, and a per-thread word cache (DESIGN §6 moe-prep).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "data/tokenizer/str_map.h"

namespace moe::tok {

struct BpeOptions {
  std::optional<std::string> unk_token;  // replaces characters with no vocabulary entry (and no byte fallback)
  bool fuse_unk = false;                 // consecutive unknown characters become one unk id
  bool byte_fallback = false;            // unknown characters become their UTF-8 bytes as <0xXX> tokens
  bool ignore_merges = false;            // a word that is itself in the vocabulary is one token, merges unused
};

class Bpe {
 public:
  // vocab: (token, id), ids < 2^31. merges: (left, right) in rank order; both sides and their concatenation
  // must be in vocab. `where` names the file for BadInput messages.
  Bpe(const std::vector<std::pair<std::string, uint32_t>>& vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions opt, const std::string& where);

  // Appends the ids of one pre-tokenized word (valid UTF-8, possibly empty) to out: the library's
  // BPE::tokenize, merges applied lowest rank first, ties to the leftmost pair.
  void tokenize(std::string_view word, std::vector<uint32_t>& out) const;

  const uint32_t* find(std::string_view token) const { return vocab_.find(token); }
  // The vocabulary token of id, or nullptr.
  const std::string_view* token(uint32_t id) const {
    return id < by_id_.size() && by_id_[id].data() ? &by_id_[id] : nullptr;
  }
  size_t size() const { return vocab_.size(); }  // entries in model.vocab (the library's vocab size)
  size_t id_bound() const { return by_id_.size(); }  // one more than the largest vocab id

 private:
  void merge_word(std::string_view word, std::vector<uint32_t>& out) const;

  StrMap vocab_;
  std::vector<std::string_view> by_id_;  // views into vocab_'s key pool
  PairMap merges_;
  BpeOptions opt_;
  int64_t unk_id_ = -1;
  int64_t byte_ids_[256];  // id of "<0xXX>" per byte, -1 when absent
  uint64_t uid_;           // tells the per-thread caches of different models apart
  std::string where_;      // the file, for messages
};

}  // namespace moe::tok
