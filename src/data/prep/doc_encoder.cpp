// Owns the document → (ids, loss mask) step of `moe-prep build` and the mapping of character cuts to token positions (DESIGN §6 C6.prep).
#include "data/prep/doc_encoder.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

namespace {

using Ids = std::vector<Tokenizer::Id>;

bool is_prefix(const Ids& p, const Ids& whole, size_t at = 0) {
  return at + p.size() <= whole.size() && std::equal(p.begin(), p.end(), whole.begin() + std::ptrdiff_t(at));
}

// Method 1 of encode_with_cuts; false when the pieces do not give the whole text's ids.
bool by_pieces(const Tokenizer& tk, std::string_view text, const std::vector<size_t>& anchors,
               const std::vector<size_t>& cuts, Ids& ids, std::vector<size_t>& cut_tokens) {
  thread_local Ids piece, pre;
  std::vector<size_t> bounds{0};
  for (size_t a : anchors)
    if (a > bounds.back() && a < text.size()) bounds.push_back(a);
  bounds.push_back(text.size());
  size_t k = 0;  // next cut
  for (size_t b = 0; b + 1 < bounds.size(); ++b) {
    const size_t lo = bounds[b], hi = bounds[b + 1];
    piece.clear();
    tk.encode(text.substr(lo, hi - lo), false, piece);
    for (; k < cuts.size() && cuts[k] < hi; ++k) {
      if (cuts[k] <= lo) {
        cut_tokens[k] = ids.size();
        continue;
      }
      pre.clear();
      tk.encode(text.substr(lo, cuts[k] - lo), false, pre);
      if (!is_prefix(pre, piece)) return false;
      cut_tokens[k] = ids.size() + pre.size();
    }
    ids.insert(ids.end(), piece.begin(), piece.end());
  }
  for (; k < cuts.size(); ++k) cut_tokens[k] = ids.size();  // cuts at the end of the text
  return true;
}

}  // namespace

CutMethod encode_with_cuts(const Tokenizer& tk, std::string_view text, const std::vector<size_t>& anchors,
                           const std::vector<size_t>& cuts, Ids& ids, std::vector<size_t>& cut_tokens) {
  MT_CHECK(std::is_sorted(cuts.begin(), cuts.end()) && std::is_sorted(anchors.begin(), anchors.end()));
  MT_CHECK(cuts.empty() || cuts.back() <= text.size());
  cut_tokens.assign(cuts.size(), 0);
  ids.clear();
  if (cuts.empty()) {
    tk.encode(text, false, ids);
    return CutMethod::Pieces;
  }
  thread_local Ids whole;
  whole.clear();
  tk.encode(text, false, whole);
  if (by_pieces(tk, text, anchors, cuts, ids, cut_tokens) && ids == whole) return CutMethod::Pieces;
  // contract: C6.prep (fallback: prefixes of the whole text)
  ids = whole;
  thread_local Ids pre;
  for (size_t k = 0; k < cuts.size(); ++k) {
    pre.clear();
    tk.encode(text.substr(0, cuts[k]), false, pre);
    MT_INPUT_CHECK(is_prefix(pre, whole), "a token straddles the boundary of a loss span at byte ", cuts[k],
                   " of the rendered text, so its loss mask would be ambiguous (the text's ids do not start with the "
                   "ids of the text before the boundary)");
    cut_tokens[k] = pre.size();
  }
  return CutMethod::Prefixes;
}

DocEncoder::DocEncoder(const Tokenizer& tk, bool mask_prompt)
    : tk_(tk), mask_prompt_(mask_prompt), affixes_(tk.special_affixes()) {}

void DocEncoder::finish(EncodedDoc& out, uint8_t eos_mask) const {
  const auto eos = tk_.eos_id();
  if (eos && (out.ids.empty() || out.ids.back() != *eos)) {
    out.ids.push_back(*eos);
    out.mask.push_back(eos_mask);
  }
  MT_CHECK(out.ids.size() == out.mask.size());
}

void DocEncoder::plain(std::string_view text, EncodedDoc& out) const {
  out.clear();
  tk_.encode(text, true, out.ids);
  out.mask.assign(out.ids.size(), 1);
  finish(out, 1);
}

void DocEncoder::pair(std::string_view prompt, std::string_view completion, EncodedDoc& out) const {
  out.clear();
  std::string text;
  text.reserve(prompt.size() + completion.size());
  text.append(prompt).append(completion);
  if (!mask_prompt_) {
    plain(text, out);
    return;
  }
  thread_local Ids body;
  std::vector<size_t> cut_tokens;
  out.used_prefix_fallback =
      encode_with_cuts(tk_, text, {}, {prompt.size()}, body, cut_tokens) == CutMethod::Prefixes;
  const auto& a = affixes_;
  out.ids.reserve(a.before.size() + body.size() + a.after.size() + 1);
  out.ids.insert(out.ids.end(), a.before.begin(), a.before.end());
  out.ids.insert(out.ids.end(), body.begin(), body.end());
  out.ids.insert(out.ids.end(), a.after.begin(), a.after.end());
  out.mask.assign(out.ids.size(), 1);
  std::fill(out.mask.begin(), out.mask.begin() + std::ptrdiff_t(a.before.size() + cut_tokens[0]), uint8_t(0));
  finish(out, 1);
}

void DocEncoder::chat(const RenderedChat& chat, EncodedDoc& out) const {
  out.clear();
  if (!mask_prompt_) {
    tk_.encode(chat.text, false, out.ids);
    out.mask.assign(out.ids.size(), 1);
    finish(out, 1);
    return;
  }
  std::vector<size_t> cuts;
  cuts.reserve(2 * chat.loss_spans.size());
  for (const CharSpan& s : chat.loss_spans) {
    MT_CHECK(s.begin < s.end && (cuts.empty() || cuts.back() <= s.begin));
    cuts.push_back(s.begin);
    cuts.push_back(s.end);
  }
  std::vector<size_t> cut_tokens;
  out.used_prefix_fallback = encode_with_cuts(tk_, chat.text, chat.anchors, cuts, out.ids, cut_tokens) ==
                             CutMethod::Prefixes;
  out.mask.assign(out.ids.size(), 0);
  for (size_t k = 0; k + 1 < cuts.size(); k += 2)
    std::fill(out.mask.begin() + std::ptrdiff_t(cut_tokens[k]), out.mask.begin() + std::ptrdiff_t(cut_tokens[k + 1]),
              uint8_t(1));
  finish(out, 0);
}

}  // namespace moe
