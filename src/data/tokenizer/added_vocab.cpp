// Owns the added vocabulary (tokenizer.json `added_tokens`): id assignment, the raw and normalized token sets, and splitting text at their matches with the single_word / lstrip / rstrip rules of the library.
#include <algorithm>

#include "core/error.h"
#include "data/tokenizer/parts.h"
#include "data/tokenizer/text.h"

namespace moe::tok {

bool AddedVocab::Trie::add(std::string_view pattern, uint32_t id) {
  uint32_t node = 0;
  for (unsigned char b : pattern) {
    const uint64_t key = uint64_t(node) << 8 | b;
    auto it = edges.find(key);
    if (it == edges.end()) {
      value.push_back(-1);
      it = edges.emplace(key, uint32_t(value.size() - 1)).first;
    }
    node = it->second;
  }
  if (value[node] >= 0) return false;
  value[node] = id;
  first[static_cast<unsigned char>(pattern[0])] = true;
  return true;
}

void AddedVocab::build(const std::vector<AddedToken>& tokens, const Bpe& model,
                       const std::vector<NormStep>* normalizer, const std::string& where) {
  // The library computes the first new id once, before adding: the model's vocab size.
  uint32_t next_id = uint32_t(model.size());
  for (const AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    uint32_t id;
    if (const uint32_t* a = by_content_.find(t.content)) id = *a;
    else if (const uint32_t* m = model.find(t.content)) id = *m;
    else id = next_id++;
    std::string decode_text = t.content;
    if (t.normalized && normalizer) normalize(*normalizer, decode_text);
    by_content_.insert(t.content, id);
    if (t.special) special_.insert(t.content, 1);
    if (entry_of_id_.size() <= id) entry_of_id_.resize(size_t(id) + 1, -1);
    if (entry_of_id_[id] >= 0) {
      entries_[size_t(entry_of_id_[id])] = Entry{t, id, decode_text};  // a repeated id: the last token wins
    } else {
      entry_of_id_[id] = int64_t(entries_.size());
      entries_.push_back(Entry{t, id, decode_text});
    }
    max_id_plus_one_ = std::max(max_id_plus_one_, id + 1);
  }
  for (const Entry& e : entries_) {
    Trie& t = e.tok.normalized ? norm_ : raw_;
    const std::string& pattern = e.tok.normalized ? e.decode_text : e.tok.content;
    MT_INPUT_CHECK(!pattern.empty(), where, ": added token '", e.tok.content, "' normalizes to an empty string");
    MT_INPUT_CHECK(t.add(pattern, e.id), where, ": added tokens repeat the pattern '", pattern,
                   "' (the tokenizers library refuses this too)");
  }
}

const std::string* AddedVocab::text_of(uint32_t id) const {
  if (id >= entry_of_id_.size() || entry_of_id_[id] < 0) return nullptr;
  return &entries_[size_t(entry_of_id_[id])].decode_text;
}

void AddedVocab::find_in(const Trie& t, std::string_view s, std::vector<std::pair<int64_t, Span>>& out) const {
  // Leftmost-longest: the earliest start where any token matches, the longest token there, then on from
  // its end.
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    if (!t.first[p[i]]) {
      ++i;
      continue;
    }
    uint32_t node = 0;
    int64_t best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < s.size(); ++j) {
      const auto it = t.edges.find(uint64_t(node) << 8 | p[j]);
      if (it == t.edges.end()) break;
      node = it->second;
      if (t.value[node] >= 0) {
        best = t.value[node];
        best_end = j + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    out.push_back({best, {i, best_end}});
    i = best_end;
  }
}

namespace {
bool ends_with_word(std::string_view s) { return !s.empty() && is_word_char(utf8_last(s, s.size())); }
bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  int len = 0;
  return is_word_char(utf8_at(s, 0, &len));
}
// Start of the run of White_Space characters that ends s.
size_t trailing_space_start(std::string_view s) {
  size_t e = s.size();
  while (e > 0) {
    size_t b = e - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    int len = 0;
    if (!is_white_space(utf8_at(s, b, &len))) break;
    e = b;
  }
  return e;
}
// Length of the run of White_Space characters that starts s.
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    int len = 0;
    if (!is_white_space(utf8_at(s, i, &len))) break;
    i += size_t(len);
  }
  return i;
}
}  // namespace

void AddedVocab::split(std::string_view s, bool normalized_set, bool at_origin, std::vector<Piece>& out) const {
  const Trie& t = normalized_set ? norm_ : raw_;
  if (s.empty()) return;
  if (t.empty()) {
    out.push_back(Piece{std::string(s), -1, at_origin});
    return;
  }
  thread_local std::vector<std::pair<int64_t, Span>> found;
  found.clear();
  find_in(t, s, found);
  size_t done = 0;  // end of the last emitted split
  for (const auto& [id, span] : found) {
    size_t start = span.first, stop = span.second;
    const AddedToken& tok = entries_[size_t(entry_of_id_[size_t(id)])].tok;
    if (tok.single_word) {
      const bool space_before = start == 0 || !ends_with_word(s.substr(0, start));
      const bool space_after = stop == s.size() || !starts_with_word(s.substr(stop));
      if (!space_before || !space_after) continue;
    }
    if (tok.lstrip) start = std::max(trailing_space_start(s.substr(0, start)), done);
    if (tok.rstrip) stop += leading_space_len(s.substr(stop));
    if (done < start) out.push_back(Piece{std::string(s.substr(done, start - done)), -1, at_origin && done == 0});
    if (stop > start) out.push_back(Piece{std::string(s.substr(start, stop - start)), id, at_origin && start == 0});
    done = stop;
  }
  if (done < s.size()) out.push_back(Piece{std::string(s.substr(done)), -1, at_origin && done == 0});
}

}  // namespace moe::tok
