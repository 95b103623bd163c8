// Owns turning one training document (plain text, a prompt/completion pair, or a rendered chat) into token ids and a per-token loss mask for `moe-prep build` (DESIGN §6 C6.prep).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "data/chat/chat_template.h"
#include "data/tokenizer/tokenizer.h"

namespace moe {

// One document's tokens. mask[i] = 1 when ids[i] is a prediction target in the loss, 0 when not.
struct EncodedDoc {
  std::vector<Tokenizer::Id> ids;
  std::vector<uint8_t> mask;
  bool used_prefix_fallback = false;  // token positions of the loss spans came from method 2 below
  void clear() {
    ids.clear();
    mask.clear();
    used_prefix_fallback = false;
  }
};

// How character cuts were turned into token positions (encode_with_cuts).
enum class CutMethod { Pieces, Prefixes };

// Encodes `text` with add_special_tokens=false into `ids` (cleared first; always equal to
// tk.encode(text, false)) and writes into cut_tokens[k] the number of tokens that cover text[0, cuts[k]).
// cuts and anchors are sorted byte offsets into text.
//   1. Pieces: the text is cut at the anchors (where the template put a special marker); each piece is encoded
//      alone and a cut inside a piece is the length of the encoding of the piece's prefix up to the cut, which
//      must be a prefix of the piece's ids. The pieces' ids together must equal the encoding of the whole text.
//   2. Prefixes, when 1 does not give the whole text's ids: for every cut c, tk.encode(text[0, c)) must be a
//      prefix of the whole text's ids.
// BadInput when neither holds (a token straddles a cut: its loss mask would be ambiguous).
CutMethod encode_with_cuts(const Tokenizer& tk, std::string_view text, const std::vector<size_t>& anchors,
                           const std::vector<size_t>& cuts, std::vector<Tokenizer::Id>& ids,
                           std::vector<size_t>& cut_tokens);

// contract: C6.prep
// Document → ids and mask. Every document ends with the tokenizer's EOS id when it has one (appended unless the
// ids already end with it). Without mask_prompt every mask is 1. With it:
//   plain(text)        every token 1 (a text document is all target); ids = encode(text, true) + EOS
//   pair(p, c)         (no chat template) ids = encode(p + c, true) + EOS: the prompt's tokens and the
//                      post-processor's leading specials 0; the completion's, trailing specials' and EOS 1
//   chat(rendered)     ids = encode(text, false) + EOS (the template renders BOS itself, as
//                      apply_chat_template(tokenize=True) does): tokens of the loss spans 1, others 0; an
//                      appended EOS 0 (it only separates documents: the template's end-of-turn already ended the
//                      reply).
class DocEncoder {
 public:
  DocEncoder(const Tokenizer& tk, bool mask_prompt);
  void plain(std::string_view text, EncodedDoc& out) const;
  void pair(std::string_view prompt, std::string_view completion, EncodedDoc& out) const;
  void chat(const RenderedChat& chat, EncodedDoc& out) const;

 private:
  void finish(EncodedDoc& out, uint8_t eos_mask) const;
  const Tokenizer& tk_;
  bool mask_prompt_;
  Tokenizer::Affixes affixes_;
};

}  // namespace moe
