// Owns the public tokenizer API: an HF tokenizer directory (tokenizer.json + tokenizer_config.json) that encodes text to the ids of the `tokenizers` library and decodes them back (DESIGN §6 moe-prep, `--tokenizer DIR`).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

// What a tokenizer.json may hold (anything else is refused with ErrorKind::BadInput, exit 2, naming the file
// and the component, e.g. "DIR/tokenizer.json: pre_tokenizer type 'Whitespace' is not supported"):
//   model         BPE (vocab; merges as "a b" strings or [a, b] lists; unk_token, fuse_unk, byte_fallback,
//                 ignore_merges; dropout null/0; no continuing_subword_prefix / end_of_word_suffix)
//   normalizer    null, NFC, Prepend, Replace (String or Regex pattern), Sequence of these
//   pre_tokenizer null, ByteLevel, Split (String or Regex; any behavior; invert), Metaspace, Sequence of these
//   post_processor null, TemplateProcessing (single template), ByteLevel, Sequence of these (one template)
//   decoder       null, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence of these
//   added_tokens  with special / normalized / lstrip / rstrip / single_word as the library applies them
//   truncation, padding: null
// Regex patterns are Oniguruma syntax in the file and run on PCRE2 (UTF + Unicode properties); Unicode
// property tables are those of the system's PCRE2 and ICU, so characters assigned in newer Unicode versions
// than theirs may classify differently.
//
// Thread safety: a loaded Tokenizer is immutable; encode/decode may run concurrently (each thread keeps its
// own BPE word cache).
class Tokenizer {
 public:
  using Id = uint32_t;

  // Reads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json. BadInput naming the file when a
  // file is missing, malformed, or holds a component listed above as unsupported.
  static Tokenizer from_dir(const std::string& dir);
  // The same from the files' text; `name` stands for the directory in messages. config_json may be empty.
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& config_json,
                             const std::string& name);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // ids of `Tokenizer.from_file(DIR/tokenizer.json).encode(text, add_special_tokens).ids`. text must be valid
  // UTF-8 (else BadInput naming the byte offset). Appends to ids (not cleared).
  void encode(std::string_view text, bool add_special_tokens, std::vector<Id>& ids) const;
  std::vector<Id> encode(std::string_view text, bool add_special_tokens) const;

  // What add_special_tokens=true puts around the ids of the text (the post-processor's single template),
  // e.g. {[<s>], []} for "<s> $A": encode(t, true) == before + encode(t, false) + after.
  struct Affixes {
    std::vector<Id> before, after;
  };
  Affixes special_affixes() const;

  // `Tokenizer.decode(ids, skip_special_tokens)`: ids unknown to the vocabulary are skipped, as the library does.
  std::string decode(const std::vector<Id>& ids, bool skip_special_tokens) const;

  // Vocabulary size with the added tokens (one more than the largest id).
  size_t vocab_size() const;
  std::optional<Id> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(Id id) const;

  // tokenizer_config.json: bos_token / eos_token (a string or {"content": ...}) as ids, and add_bos_token /
  // add_eos_token. Metadata only: encode() adds exactly what tokenizer.json's post_processor adds.
  std::optional<Id> bos_id() const;
  std::optional<Id> eos_id() const;
  std::optional<bool> add_bos() const;
  std::optional<bool> add_eos() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
