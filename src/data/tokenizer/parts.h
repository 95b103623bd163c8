// Owns the internal pipeline parts of an HF tokenizer as plain data plus the functions that run them: patterns, normalizers, pre-tokenizers, added vocabulary, decoders, post-processor (DESIGN §6 moe-prep).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/tokenizer/bpe.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/str_map.h"

namespace moe::tok {

// A Split/Replace pattern: {"String": s} (a literal) or {"Regex": r} (Oniguruma syntax, run on PCRE2).
struct Pattern {
  std::string literal;                  // used when regex is null; never empty
  std::shared_ptr<const Regex> regex;
  // Matched spans of s, leftmost first, non-overlapping.
  void find(std::string_view s, std::vector<Span>& out) const;
};

// The library's Pattern::find_matches: spans covering all of s in order, each flagged match / non-match
// (flags flipped when invert). An empty s gives one empty non-match span.
void find_matches(const Pattern& p, std::string_view s, bool invert, std::vector<std::pair<Span, bool>>& out);

// ---- normalizers (a Sequence is flattened: each step rewrites the whole text in order) ----
enum class NormKind { NFC, Prepend, Replace };
struct NormStep {
  NormKind kind;
  std::string text;  // Prepend: the prefix; Replace: the content
  Pattern pattern;   // Replace
};
void normalize(const std::vector<NormStep>& steps, std::string& s);

// One split of the text on its way to ids: `token` >= 0 when an added token already decided it.
// `at_origin`: the split starts at byte 0 of the input (Metaspace's prepend_scheme "first" reads it).
struct Piece {
  std::string text;
  int64_t token = -1;
  bool at_origin = false;
};

// ---- pre-tokenizers (a Sequence is flattened) ----
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { Always, First, Never };
enum class PreKind { ByteLevel, Split, Metaspace };
struct PreStep {
  PreKind kind;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = true;          // ByteLevel: split with GPT-2's pattern first
  Pattern pattern;                // Split (and ByteLevel's GPT-2 pattern)
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;            // Split
  std::string replacement;        // Metaspace: the UTF-8 of its replacement char
  PrependScheme scheme = PrependScheme::Always;
  bool split = true;              // Metaspace
};
// Applies the steps to every piece without a token; empty pieces are dropped after each split.
void pre_tokenize(const std::vector<PreStep>& steps, std::vector<Piece>& pieces);
// GPT-2's pre-tokenization pattern (the ByteLevel pre-tokenizer's `use_regex`).
std::shared_ptr<const Regex> gpt2_regex();

// ---- added tokens ----
struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class AddedVocab {
 public:
  // As the library's add_tokens on load: ids come from the model vocabulary when the content is there, else
  // the next free id from the model's vocab size on; normalized tokens match their normalized content.
  void build(const std::vector<AddedToken>& tokens, const Bpe& model, const std::vector<NormStep>* normalizer,
             const std::string& where);
  // Splits s at added tokens of one set (normalized=false set on the raw text, normalized=true set on the
  // normalized text) with the library's single_word / lstrip / rstrip rules; appends pieces to out.
  void split(std::string_view s, bool normalized_set, bool at_origin, std::vector<Piece>& out) const;
  // The id of an added token's content, or nullptr.
  const uint32_t* find(std::string_view content) const { return by_content_.find(content); }
  // The decode text of an added id (its normalized form for normalized tokens), or nullptr.
  const std::string* text_of(uint32_t id) const;
  bool is_special(std::string_view token) const { return special_.find(token) != nullptr; }
  size_t size() const { return by_content_.size(); }
  uint32_t max_id_plus_one() const { return max_id_plus_one_; }

 private:
  // Byte trie of one token set, searched leftmost-longest (the library's Aho-Corasick match kind).
  struct Trie {
    std::vector<int64_t> value{-1};                // per node: token id ending here, or -1
    std::unordered_map<uint64_t, uint32_t> edges;  // (node << 8 | byte) → child node
    bool first[256] = {};
    bool empty() const { return value.size() == 1; }
    bool add(std::string_view pattern, uint32_t id);  // false when the pattern is already there
  };
  struct Entry {
    AddedToken tok;
    uint32_t id;
    std::string decode_text;
  };
  void find_in(const Trie& t, std::string_view s, std::vector<std::pair<int64_t, Span>>& out) const;

  std::vector<Entry> entries_;  // by insertion, last flags win per id
  StrMap by_content_;           // content → id
  std::vector<int64_t> entry_of_id_;
  StrMap special_;
  Trie raw_, norm_;
  uint32_t max_id_plus_one_ = 0;
};

// ---- post-processor: the single-sequence template ([] = none) ----
struct TemplatePiece {
  bool is_sequence = false;
  std::vector<uint32_t> ids;  // special token ids
};

// ---- decoders (a Sequence is flattened; each step maps the token list) ----
enum class DecKind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace };
struct DecStep {
  DecKind kind;
  Pattern pattern;                // Replace
  std::string content;            // Replace
  char32_t strip_char = U' ';     // Strip
  size_t start = 0, stop = 0;     // Strip
  char32_t replacement = U'\u2581';  // Metaspace
  PrependScheme scheme = PrependScheme::Always;
};
void decode_chain(const std::vector<DecStep>& steps, std::vector<std::string>& tokens);

}  // namespace moe::tok
