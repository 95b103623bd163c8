// Owns the tokenizer's flat hash tables: string → id (vocabulary, word cache) and id pair → merge (BPE ranks).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace moe::tok {

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xFF51AFD7ED558CCDull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 29;
  }
  uint64_t t = 0;
  std::memcpy(&t, s.data() + i, s.size() - i);
  h = (h ^ t) * 0xC2B2AE3D27D4EB4Full;
  h ^= h >> 32;
  return h * 0x165667B19E3779F9ull;
}

// String → uint32 value, keys copied into one pool. insert() overwrites the value of an existing key.
class StrMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    if (cap > slots_.size()) rehash(cap);
  }
  void clear() {
    pool_.clear();
    entries_.clear();
    std::fill(slots_.begin(), slots_.end(), -1);
  }
  size_t size() const { return entries_.size(); }
  size_t pool_bytes() const { return pool_.size(); }

  // Returns the entry index (stable until clear()).
  size_t insert(std::string_view key, uint32_t value) {
    if (2 * (entries_.size() + 1) > slots_.size()) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    const uint64_t h = hash_bytes(key);
    size_t i = h & (slots_.size() - 1);
    for (;; i = (i + 1) & (slots_.size() - 1)) {
      const int64_t e = slots_[i];
      if (e < 0) break;
      if (entries_[size_t(e)].hash == h && key_of(size_t(e)) == key) {
        entries_[size_t(e)].value = value;
        return size_t(e);
      }
    }
    slots_[i] = int64_t(entries_.size());
    entries_.push_back({h, pool_.size(), key.size(), value});
    pool_.append(key.data(), key.size());
    return entries_.size() - 1;
  }
  const uint32_t* find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = hash_bytes(key);
    for (size_t i = h & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const int64_t e = slots_[i];
      if (e < 0) return nullptr;
      const Entry& en = entries_[size_t(e)];
      if (en.hash == h && key_of(size_t(e)) == key) return &en.value;
    }
  }
  std::string_view key_of(size_t entry) const {
    return std::string_view(pool_.data() + entries_[entry].off, entries_[entry].len);
  }
  uint32_t value_of(size_t entry) const { return entries_[entry].value; }

 private:
  struct Entry {
    uint64_t hash;
    size_t off, len;
    uint32_t value;
  };
  void rehash(size_t cap) {
    slots_.assign(cap, -1);
    for (size_t e = 0; e < entries_.size(); ++e) {
      size_t i = entries_[e].hash & (cap - 1);
      while (slots_[i] >= 0) i = (i + 1) & (cap - 1);
      slots_[i] = int64_t(e);
    }
  }
  std::string pool_;
  std::vector<Entry> entries_;
  std::vector<int64_t> slots_;
};

// (left id, right id) → (rank, merged id). insert() overwrites, as the library's map does for repeated pairs.
class PairMap {
 public:
  struct Merge {
    uint32_t rank, new_id;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, {0, 0});
  }
  void insert(uint32_t a, uint32_t b, Merge m) {
    const uint64_t k = key(a, b);
    size_t i = slot(k);
    while (keys_[i] != kEmpty && keys_[i] != k) i = (i + 1) & (keys_.size() - 1);
    keys_[i] = k;
    vals_[i] = m;
  }
  const Merge* find(uint32_t a, uint32_t b) const {
    if (keys_.empty()) return nullptr;
    const uint64_t k = key(a, b);
    for (size_t i = slot(k);; i = (i + 1) & (keys_.size() - 1)) {
      if (keys_[i] == k) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);  // ids are < 2^32 - 1, so (a, b) never packs to this
  static uint64_t key(uint32_t a, uint32_t b) { return uint64_t(a) << 32 | b; }
  size_t slot(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> 17) & (keys_.size() - 1); }
  std::vector<uint64_t> keys_;
  std::vector<Merge> vals_;
};

}  // namespace moe::tok
