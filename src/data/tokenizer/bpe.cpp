// Owns BPE word segmentation: initial symbols (vocab chars, byte fallback, unk fusing), the rank-ordered merge loop over a min-heap of candidate pairs, and the per-thread word cache.
#include "data/tokenizer/bpe.h"

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "core/error.h"
#include "data/tokenizer/text.h"

namespace moe::tok {

namespace {
std::atomic<uint64_t> g_next_uid{1};

// One thread's cache of segmented words: word → ids. Cleared when it grows past its bounds (the library
// keeps a bounded cache too; results never depend on it).
struct WordCache {
  uint64_t owner = 0;
  StrMap index;               // word → entry number
  std::vector<uint32_t> off;  // entry → first id in ids
  std::vector<uint32_t> ids;
  void reset(uint64_t who) {
    owner = who;
    index.clear();
    off.clear();
    ids.clear();
  }
};
constexpr size_t kCacheWords = 1 << 16;
constexpr size_t kCacheWordBytes = 256;  // longer words are not cached

struct Sym {
  uint32_t id;
  int32_t prev, next;
  bool alive;
};
struct Cand {
  uint32_t rank, pos, new_id;
};
// std heap functions keep the largest on top; "larger" here means lower rank, then lower position.
struct CandLess {
  bool operator()(const Cand& a, const Cand& b) const { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; }
};
}  // namespace

Bpe::Bpe(const std::vector<std::pair<std::string, uint32_t>>& vocab,
         const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions opt, const std::string& where)
    : opt_(std::move(opt)), uid_(g_next_uid++), where_(where) {
  vocab_.reserve(vocab.size());
  uint32_t max_id = 0;
  for (const auto& [tok, id] : vocab) {
    MT_INPUT_CHECK(id <= 0x7FFFFFFFu, where, ": model.vocab id ", id, " of token '", tok, "' is >= 2^31");
    vocab_.insert(tok, id);
    max_id = std::max(max_id, id);
  }
  by_id_.assign(vocab.empty() ? 0 : size_t(max_id) + 1, std::string_view());
  for (size_t e = 0; e < vocab_.size(); ++e) by_id_[vocab_.value_of(e)] = vocab_.key_of(e);

  merges_.reserve(merges.size());
  std::string joined;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    const uint32_t* ia = vocab_.find(a);
    const uint32_t* ib = vocab_.find(b);
    MT_INPUT_CHECK(ia && ib, where, ": model.merges[", r, "] ('", a, "', '", b, "') names a token that is not in model.vocab");
    joined.assign(a).append(b);
    const uint32_t* inew = vocab_.find(joined);
    MT_INPUT_CHECK(inew, where, ": model.merges[", r, "] makes '", joined, "', which is not in model.vocab");
    merges_.insert(*ia, *ib, {uint32_t(r), *inew});
  }
  if (opt_.unk_token) {
    const uint32_t* u = vocab_.find(*opt_.unk_token);
    if (u) unk_id_ = *u;  // a missing unk token fails only when needed, as in the library
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const uint32_t* id = vocab_.find(name);
    byte_ids_[b] = id ? int64_t(*id) : -1;
  }
}

void Bpe::tokenize(std::string_view word, std::vector<uint32_t>& out) const {
  if (word.empty()) return;
  if (opt_.ignore_merges) {
    if (const uint32_t* id = vocab_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  if (word.size() > kCacheWordBytes) {
    merge_word(word, out);
    return;
  }
  thread_local WordCache cache;
  if (cache.owner != uid_) cache.reset(uid_);
  if (const uint32_t* e = cache.index.find(word)) {
    const uint32_t b = cache.off[*e], en = *e + 1 < cache.off.size() ? cache.off[*e + 1] : uint32_t(cache.ids.size());
    out.insert(out.end(), cache.ids.begin() + b, cache.ids.begin() + en);
    return;
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cache.index.size() >= kCacheWords) cache.reset(uid_);
  cache.index.insert(word, uint32_t(cache.off.size()));
  cache.off.push_back(uint32_t(cache.ids.size()));
  cache.ids.insert(cache.ids.end(), out.begin() + first, out.end());
}

void Bpe::merge_word(std::string_view w, std::vector<uint32_t>& out) const {
  std::vector<Sym> syms;
  syms.reserve(w.size());
  auto add = [&](uint32_t id) {
    const int32_t n = int32_t(syms.size());
    if (n > 0) syms.back().next = n;
    syms.push_back({id, n - 1, -1, true});
  };
  // Initial symbols, as the library's BPE::merge_word: a pending unknown is flushed before the next known
  // character (not before byte-fallback bytes, which the library adds first).
  bool unk_pending = false;
  for (size_t i = 0; i < w.size();) {
    int len = 0;
    utf8_at(w, i, &len);
    const std::string_view ch = w.substr(i, size_t(len));
    i += size_t(len);
    if (const uint32_t* id = vocab_.find(ch)) {
      if (unk_pending) {
        add(uint32_t(unk_id_));
        unk_pending = false;
      }
      add(*id);
      continue;
    }
    if (opt_.byte_fallback) {
      bool all = true;
      for (unsigned char c : ch) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : ch) add(uint32_t(byte_ids_[c]));
        continue;
      }
    }
    if (opt_.unk_token) {
      MT_INPUT_CHECK(unk_id_ >= 0, where_, ": model.unk_token '", *opt_.unk_token,
                     "' is needed for a character but is not in model.vocab");
      if (unk_pending && !opt_.fuse_unk) add(uint32_t(unk_id_));
      unk_pending = true;
    }
    // without an unk token the character is dropped, as in the library
  }
  if (unk_pending) add(uint32_t(unk_id_));

  if (syms.size() > 1) {
    std::vector<Cand> heap;
    heap.reserve(syms.size());
    for (size_t i = 0; i + 1 < syms.size(); ++i)
      if (const PairMap::Merge* m = merges_.find(syms[i].id, syms[i + 1].id))
        heap.push_back({m->rank, uint32_t(i), m->new_id});
    std::make_heap(heap.begin(), heap.end(), CandLess());
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), CandLess());
      const Cand top = heap.back();
      heap.pop_back();
      Sym& cur = syms[top.pos];
      if (!cur.alive || cur.next < 0) continue;
      const int32_t nxt = cur.next;
      // Skip stale candidates: the pair at pos must still merge into the same id.
      const PairMap::Merge* m = merges_.find(cur.id, syms[size_t(nxt)].id);
      if (!m || m->new_id != top.new_id) continue;
      cur.id = top.new_id;
      cur.next = syms[size_t(nxt)].next;
      syms[size_t(nxt)].alive = false;
      if (cur.next >= 0) syms[size_t(cur.next)].prev = int32_t(top.pos);
      if (cur.prev >= 0) {
        if (const PairMap::Merge* pm = merges_.find(syms[size_t(cur.prev)].id, cur.id)) {
          heap.push_back({pm->rank, uint32_t(cur.prev), pm->new_id});
          std::push_heap(heap.begin(), heap.end(), CandLess());
        }
      }
      if (cur.next >= 0) {
        if (const PairMap::Merge* nm = merges_.find(cur.id, syms[size_t(cur.next)].id)) {
          heap.push_back({nm->rank, top.pos, nm->new_id});
          std::push_heap(heap.begin(), heap.end(), CandLess());
        }
      }
    }
  }
  for (const Sym& s : syms)
    if (s.alive) out.push_back(s.id);
}

}  // namespace moe::tok
