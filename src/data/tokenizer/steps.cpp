// Owns the text steps before the model: pattern matching, normalizers (NFC, Prepend, Replace) and pre-tokenizers (ByteLevel, Split, Metaspace) with the library's split behaviors.
#include <algorithm>

#include "core/error.h"
#include "data/tokenizer/byte_level.h"
#include "data/tokenizer/parts.h"
#include "data/tokenizer/text.h"

namespace moe::tok {

void Pattern::find(std::string_view s, std::vector<Span>& out) const {
  if (regex) {
    regex->find_all(s, out);
    return;
  }
  for (size_t pos = s.find(literal); pos != std::string_view::npos; pos = s.find(literal, pos + literal.size()))
    out.emplace_back(pos, pos + literal.size());
}

void find_matches(const Pattern& p, std::string_view s, bool invert, std::vector<std::pair<Span, bool>>& out) {
  out.clear();
  if (s.empty()) {
    out.push_back({{0, 0}, invert});
    return;
  }
  thread_local std::vector<Span> spans;
  spans.clear();
  p.find(s, spans);
  size_t prev = 0;
  for (const Span& m : spans) {
    if (prev != m.first) out.push_back({{prev, m.first}, invert});
    out.push_back({m, !invert});
    prev = m.second;
  }
  if (prev != s.size()) out.push_back({{prev, s.size()}, invert});
}

namespace {
void replace_all(const Pattern& p, const std::string& content, std::string& s) {
  std::vector<std::pair<Span, bool>> m;
  find_matches(p, s, false, m);
  if (m.size() == 1 && !m[0].second) return;
  std::string out;
  out.reserve(s.size() + 16);
  for (const auto& [span, is_match] : m) {
    if (is_match) out += content;
    else out.append(s, span.first, span.second - span.first);
  }
  s.swap(out);
}

// NormalizedString::split: the spans to keep, from the match list and the delimiter behavior.
void split_spans(const std::vector<std::pair<Span, bool>>& matches, SplitBehavior b, std::vector<Span>& keep) {
  keep.clear();
  switch (b) {
    case SplitBehavior::Isolated:
      for (const auto& m : matches) keep.push_back(m.first);
      return;
    case SplitBehavior::Removed:
      for (const auto& m : matches)
        if (!m.second) keep.push_back(m.first);
      return;
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (const auto& [span, is_match] : matches) {
        if (is_match == prev_match && !keep.empty()) keep.back().second = span.second;
        else keep.push_back(span);
        prev_match = is_match;
      }
      return;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const auto& [span, is_match] : matches) {
        if (is_match && !prev_match && !keep.empty()) keep.back().second = span.second;
        else keep.push_back(span);
        prev_match = is_match;
      }
      return;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (size_t k = matches.size(); k-- > 0;) {
        const auto& [span, is_match] = matches[k];
        if (is_match && !prev_match && !keep.empty()) keep.back().first = span.first;
        else keep.push_back(span);
        prev_match = is_match;
      }
      std::reverse(keep.begin(), keep.end());
      return;
    }
  }
}

// Replaces every untokenized piece by its non-empty sub-pieces (`fn` fills the kept spans of a text).
template <typename Fn>
void split_pieces(std::vector<Piece>& pieces, Fn&& fn) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  std::vector<Span> keep;
  for (Piece& p : pieces) {
    if (p.token >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    keep.clear();
    fn(p, keep);
    for (const Span& k : keep) {
      if (k.second == k.first) continue;
      if (k.first == 0 && k.second == p.text.size()) {
        out.push_back(std::move(p));
        break;
      }
      out.push_back(Piece{p.text.substr(k.first, k.second - k.first), -1, p.at_origin && k.first == 0});
    }
  }
  pieces.swap(out);
}
}  // namespace

void normalize(const std::vector<NormStep>& steps, std::string& s) {
  for (const NormStep& st : steps) {
    switch (st.kind) {
      case NormKind::NFC:
        s = nfc(s);
        break;
      case NormKind::Prepend:
        if (!s.empty()) s.insert(0, st.text);
        break;
      case NormKind::Replace:
        replace_all(st.pattern, st.text, s);
        break;
    }
  }
}

std::shared_ptr<const Regex> gpt2_regex() {
  static const std::shared_ptr<const Regex> re = std::make_shared<const Regex>(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "GPT-2 byte-level pattern");
  return re;
}

void pre_tokenize(const std::vector<PreStep>& steps, std::vector<Piece>& pieces) {
  std::vector<std::pair<Span, bool>> m;
  for (const PreStep& st : steps) {
    switch (st.kind) {
      case PreKind::ByteLevel: {
        split_pieces(pieces, [&](Piece& p, std::vector<Span>& keep) {
          if (st.add_prefix_space && p.text[0] != ' ') p.text.insert(0, 1, ' ');
          if (st.use_regex) {
            find_matches(st.pattern, p.text, false, m);
            split_spans(m, SplitBehavior::Isolated, keep);
          } else {
            keep.emplace_back(0, p.text.size());
          }
        });
        const ByteAlphabet& ab = ByteAlphabet::get();
        std::string mapped;
        for (Piece& p : pieces) {
          if (p.token >= 0) continue;
          mapped.clear();
          for (unsigned char c : p.text) mapped += ab.utf8(c);
          p.text.swap(mapped);
        }
        break;
      }
      case PreKind::Split:
        split_pieces(pieces, [&](Piece& p, std::vector<Span>& keep) {
          find_matches(st.pattern, p.text, st.invert, m);
          split_spans(m, st.behavior, keep);
        });
        break;
      case PreKind::Metaspace: {
        const Pattern space{" ", nullptr};
        const Pattern rep{st.replacement, nullptr};
        split_pieces(pieces, [&](Piece& p, std::vector<Span>& keep) {
          replace_all(space, st.replacement, p.text);
          const bool starts = p.text.compare(0, st.replacement.size(), st.replacement) == 0;
          if (!starts && (st.scheme == PrependScheme::Always || (st.scheme == PrependScheme::First && p.at_origin)))
            p.text.insert(0, st.replacement);
          if (st.split) {
            find_matches(rep, p.text, false, m);
            split_spans(m, SplitBehavior::MergedWithNext, keep);
          } else {
            keep.emplace_back(0, p.text.size());
          }
        });
        break;
      }
    }
  }
}

}  // namespace moe::tok
