// Owns memory-mapped token sources, id validation, the (optionally shuffled) window order and data.mix interleaving.
#include "data/token_data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer/tokenizer.h"

namespace moe {

namespace {

// What a non-regular file is, for messages.
const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISLNK(m)) return "a symbolic link";
  return "not a regular file";
}

bool is_regular(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A read-only mapping of a whole regular file (a directory, FIFO, device or socket is refused before any read: a
// FIFO would block, /dev/zero never ends). An empty file maps to nothing.
class MappedFile {
 public:
  MappedFile(const std::string& key, const std::string& path) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for regular files.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0) {
      const int e = errno;
      if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
        MT_INPUT_FAIL(key, " '", path, "' is ", file_kind(st.st_mode), ", not a regular file; give a token or text file");
      MT_INPUT_FAIL(key, ": cannot open '", path, "': ", std::strerror(e),
                    "; check the path (relative paths are resolved from the working directory)");
    }
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      const bool stat_ok = ::fstat(fd, &st) == 0;
      ::close(fd);
      MT_INPUT_FAIL(key, " '", path, "' is ", stat_ok ? file_kind(st.st_mode) : "unreadable",
                    ", not a regular file; give a token or text file");
    }
    size_ = uint64_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_t(size_), PROT_READ, MAP_SHARED, fd, 0);
      const int e = errno;
      ::close(fd);
      MT_INPUT_CHECK(p != MAP_FAILED, key, " '", path, "': cannot map ", size_, " bytes: ", std::strerror(e));
      data_ = static_cast<const unsigned char*>(p);
      ::madvise(p, size_t(size_), MADV_RANDOM);  // windows are read in the (shuffled) sample order
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_t(size_));
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const unsigned char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

// The meta.json of a moe-prep build directory: format_version 1 and the token count.
i64 prepared_num_tokens(const std::string& key, const std::string& dir) {
  const std::string meta = dir + "/meta.json";
  std::ifstream in(meta);
  MT_INPUT_CHECK(in.good(), key, " '", dir, "' is a directory without meta.json: give a token or text file, or a "
                 "directory written by moe-prep build");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const std::exception& e) {
    MT_INPUT_FAIL(key, " '", meta, "' is not valid JSON: ", e.what());
  }
  MT_INPUT_CHECK(j.is_object() && j.contains("format_version") && j["format_version"].is_number_integer(), key, " '",
                 meta, "' has no integer format_version: not written by moe-prep build?");
  MT_INPUT_CHECK(j["format_version"].get<i64>() == 1, key, " '", meta, "': format_version ",
                 j["format_version"].get<i64>(), " is not supported (this build reads 1)");
  MT_INPUT_CHECK(j.contains("num_tokens") && j["num_tokens"].is_number_integer() && j["num_tokens"].get<i64>() >= 0,
                 key, " '", meta, "': num_tokens missing or not a non-negative integer");
  return j["num_tokens"].get<i64>();
}

}  // namespace

// One source: a token file (uint32/uint16), a text file (bytes), or a moe-prep build directory (tokens.bin uint32 +
// loss_mask.bin one uint8 per token), memory-mapped; ids checked < vocab once.
class TokenSource {
 public:
  TokenSource(const std::string& key, const std::string& path, const DataConfig& d, int vocab, int L, DataScan scan)
      : path_(path) {
    MT_INPUT_CHECK(!path.empty(), key, " is not set; give a token file (data.format: tokens), a text file "
                   "(data.format: text) or a moe-prep build directory");
    if (is_directory(path)) {
      MT_INPUT_CHECK(d.format == DataFormat::Tokens, key, " '", path, "' is a moe-prep build directory: it holds "
                     "tokens, so data.format must be tokens");
      MT_INPUT_CHECK(d.dtype == TokenDtype::U32, key, " '", path, "' is a moe-prep build directory (uint32 ids): "
                     "data.dtype must be uint32");
      const i64 n = prepared_num_tokens(key, path);
      tokens_ = std::make_unique<MappedFile>(key, path + "/tokens.bin");
      mask_ = std::make_unique<MappedFile>(key, path + "/loss_mask.bin");
      MT_INPUT_CHECK(tokens_->size() == uint64_t(n) * 4, key, " '", path, "/tokens.bin': ", tokens_->size(),
                     " bytes, but meta.json says ", n, " uint32 tokens");
      MT_INPUT_CHECK(mask_->size() == uint64_t(n), key, " '", path, "/loss_mask.bin': ", mask_->size(),
                     " bytes, but meta.json says ", n, " tokens (one byte each)");
      if (is_regular(path + "/docs.bin")) {  // document starts (uint64), then the token count
        docs_ = std::make_unique<MappedFile>(key, path + "/docs.bin");
        const uint64_t nd = docs_->size() / 8;
        MT_INPUT_CHECK(docs_->size() % 8 == 0 && nd >= 2 && doc(0) == 0 && doc(i64(nd) - 1) == uint64_t(n), key, " '",
                       path, "/docs.bin': must hold uint64 document starts from 0, then num_tokens (", n, ")");
        for (uint64_t j = 1; j < nd; ++j)
          MT_INPUT_CHECK(doc(i64(j)) > doc(i64(j) - 1), key, " '", path, "/docs.bin': document starts must increase (",
                         doc(i64(j) - 1), " then ", doc(i64(j)), " at entry ", j, ")");
        n_docs_ = i64(nd) - 1;
      }
      es_ = 4;
    } else {
      text_ = d.format == DataFormat::Text;
      if (text_)
        MT_INPUT_CHECK(vocab >= 256, "data.format: text uses byte-level tokens 0..255, so model.vocab_size must be "
                       ">= 256, got ", vocab);
      es_ = text_ ? 1 : d.dtype == TokenDtype::U16 ? 2 : 4;
      tokens_ = std::make_unique<MappedFile>(key, path);
      MT_INPUT_CHECK(tokens_->size() % uint64_t(es_) == 0, key, " '", path, "': size ", tokens_->size(),
                     " bytes is not a multiple of ", es_, " (data.dtype ", es_ == 2 ? "uint16" : "uint32",
                     "); is data.dtype right?");
    }
    n_tokens_ = i64(tokens_->size() / uint64_t(es_));
    n_windows_ = n_tokens_ >= 1 ? (n_tokens_ - 1) / L : 0;
    MT_INPUT_CHECK(n_windows_ >= 1, key, " '", path, "': ", n_tokens_, " tokens is shorter than one window of "
                   "train.seq_len + 1 = ", i64(L) + 1, " tokens");
    if (scan == DataScan::Ids && !text_) {
      for (i64 i = 0; i < n_tokens_; ++i) {
        const uint32_t v = token(i);
        MT_INPUT_CHECK(v < uint32_t(vocab), key, " '", path, "': token id ", v, " at position ", i,
                       " is >= model.vocab_size ", vocab, "; was the file made with another tokenizer?");
      }
    }
  }

  i64 num_tokens() const { return n_tokens_; }
  i64 num_windows() const { return n_windows_; }
  bool has_mask() const { return mask_ != nullptr; }
  bool has_docs() const { return docs_ != nullptr; }
  // Document d's first token (d = num_docs: the token count).
  uint64_t doc(i64 d) const {
    uint64_t v;
    std::memcpy(&v, docs_->data() + size_t(d) * 8, 8);
    return v;
  }
  // The document holding token p: the last d with doc(d) ≤ p.
  i64 doc_of(i64 p) const {
    i64 lo = 0, hi = n_docs_ - 1;
    while (lo < hi) {
      const i64 mid = (lo + hi + 1) / 2;
      if (doc(mid) <= uint64_t(p)) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
  const std::string& path() const { return path_; }

  uint32_t token(i64 i) const {
    const unsigned char* p = tokens_->data() + size_t(i) * size_t(es_);
    uint32_t v = 0;
    for (int b = 0; b < es_; ++b) v |= uint32_t(p[b]) << (8 * b);
    return v;
  }
  // Token i counts as a target (no mask: every token).
  bool counts(i64 i) const { return !mask_ || mask_->data()[i] != 0; }

 private:
  std::string path_;
  std::unique_ptr<MappedFile> tokens_, mask_, docs_;
  i64 n_docs_ = 0;
  int es_ = 4;
  bool text_ = false;
  i64 n_tokens_ = 0, n_windows_ = 0;
};

i64 check_token_file(const DataConfig& d, const std::string& path, int vocab, int seq_len, DataScan scan,
                     const std::string& key) {
  return TokenSource(key, path, d, vocab, seq_len, scan).num_tokens();
}

// The sources of d: data.path alone, or data.mix (path, weight) entries.
static std::vector<std::pair<std::string, double>> source_list(const DataConfig& d, const std::string& key) {
  if (key != "data.path") return {{d.path, 1.0}};  // eval.data: one file
  MT_INPUT_CHECK(d.mix.empty() || d.path.empty(), "data.path and data.mix are both set: give one file in data.path, or "
                 "several with weights in data.mix");
  if (!d.mix.empty()) return d.mix;
  return {{d.path, 1.0}};
}

static void check_mask_rule(const DataConfig& d, const std::string& key, const std::string& path,
                            const TokenSource& s) {
  MT_INPUT_CHECK(!d.mask_prompt || s.has_mask(), "data.mask_prompt: true needs loss masks, which only a moe-prep "
                 "build directory carries; ", key, " '", path, "' is a plain token file");
  MT_INPUT_CHECK(!d.reset_attention || s.has_docs(), "data.reset_attention: true needs document boundaries, which only "
                 "a moe-prep build directory carries (docs.bin); ", key, " '", path, "' has none");
}

// data.tokenizer: the tokenizer the token data was made with (the HF export copies it). It must load, fit the
// model's vocabulary, and agree with every moe-prep build directory's meta.json vocab_size.
static void check_data_tokenizer(const DataConfig& d, int vocab) {
  const Tokenizer tok = Tokenizer::from_dir(d.tokenizer);
  MT_INPUT_CHECK(tok.vocab_size() <= size_t(vocab), "data.tokenizer ", d.tokenizer, " has ", tok.vocab_size(),
                 " tokens but model.vocab_size is ", vocab);
  for (const auto& [path, w] : source_list(d, "data.path")) {
    if (!is_directory(path)) continue;
    std::ifstream in(path + "/meta.json");
    nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("vocab_size") || !j["vocab_size"].is_number_integer()) continue;
    MT_INPUT_CHECK(j["vocab_size"].get<i64>() == i64(tok.vocab_size()), "data.tokenizer ", d.tokenizer, " has ",
                   tok.vocab_size(), " tokens but ", path, "/meta.json says its data was made with a tokenizer of ",
                   j["vocab_size"].get<i64>(), ": was it built with another tokenizer?");
  }
}

i64 check_data_sources(const DataConfig& d, int vocab, int seq_len, DataScan scan) {
  if (!d.tokenizer.empty()) check_data_tokenizer(d, vocab);
  i64 total = 0;
  const bool mix = !d.mix.empty();
  for (const auto& [path, w] : source_list(d, "data.path")) {
    const std::string key = mix ? "data.mix" : "data.path";
    const TokenSource s(key, path, d, vocab, seq_len, scan);
    check_mask_rule(d, key, path, s);
    total += s.num_tokens();
  }
  return total;
}

TokenData::TokenData(const DataConfig& d, int vocab, int seq_len, uint64_t seed, const std::string& key,
                     i64 plan_samples)
    : L_(seq_len), shuffle_(d.shuffle), mask_prompt_(d.mask_prompt), reset_attention_(d.reset_attention), seed_(seed) {
  if (d.format == DataFormat::Jsonl)
    MT_INPUT_FAIL("data.format: jsonl is read by moe-prep build (JSONL -> token directory); train on its output with "
                  "data.format: tokens and data.path: that directory");
  const auto list = source_list(d, key);
  const std::string skey = key == "data.path" && !d.mix.empty() ? "data.mix" : key;
  double wsum = 0;
  for (const auto& [path, w] : list) {
    sources_.push_back(std::make_unique<TokenSource>(skey, path, d, vocab, seq_len, DataScan::Ids));
    check_mask_rule(d, skey, path, *sources_.back());
    wsum += w;
  }
  double c = 0;
  for (const auto& [path, w] : list) cumulative_.push_back(c += w / wsum);
  cumulative_.back() = 1.0;
  const size_t S = sources_.size();
  perm_epoch_.assign(S, -1);
  perm_.resize(S);
  if (S > 1) {  // the schedule's per-block prefix counts, laid out once for the run's samples
    const i64 blocks = std::max<i64>(plan_samples, 1) / kBlock + 1;
    block_counts_.assign(size_t(blocks) * S, 0);
    std::vector<i64> count(S, 0);
    for (i64 b = 0; b < blocks; ++b) {
      std::copy(count.begin(), count.end(), block_counts_.begin() + b * i64(S));
      if (b + 1 < blocks)
        for (i64 i = b * kBlock; i < (b + 1) * kBlock; ++i) ++count[size_t(pick(i))];
    }
  }
}

TokenData::~TokenData() = default;

i64 TokenData::num_windows() const {
  i64 n = 0;
  for (const auto& s : sources_) n += s->num_windows();
  return n;
}

i64 TokenData::num_tokens() const {
  i64 n = 0;
  for (const auto& s : sources_) n += s->num_tokens();
  return n;
}

int TokenData::pick(i64 i) const {
  constexpr double phi = 0.6180339887498949;  // (√5 − 1)/2
  const double u = std::fmod(double(i + 1) * phi, 1.0);
  int s = 0;
  while (s + 1 < int(cumulative_.size()) && u >= cumulative_[size_t(s)]) ++s;
  return s;
}

std::pair<int, i64> TokenData::locate(i64 i) const {
  const size_t S = sources_.size();
  if (S == 1) return {0, i};
  const int s = pick(i);
  const i64 nb = i64(block_counts_.size() / S);
  const i64 b = std::min(i / kBlock, nb - 1);
  i64 k = block_counts_[size_t(b) * S + size_t(s)];
  for (i64 j = b * kBlock; j < i; ++j) k += pick(j) == s;  // ≤ kBlock steps inside the planned range
  return {s, k};
}

// The window of source s's k-th sample: k mod n_s, through that source epoch's permutation when data.shuffle.
i64 TokenData::source_window(int s, i64 k) const {
  const TokenSource& src = *sources_[size_t(s)];
  const i64 n = src.num_windows();
  i64 w = k % n;
  if (shuffle_) {
    const i64 epoch = k / n;
    std::vector<i64>& perm = perm_[size_t(s)];
    if (epoch != perm_epoch_[size_t(s)]) {
      // Fisher–Yates from Philox keyed by (seed, epoch, source): the same on every rank.
      perm.resize(size_t(n));
      for (i64 j = 0; j < n; ++j) perm[size_t(j)] = j;
      const Philox ph(seed_, RngPurpose::Shuffle);
      for (i64 j = n - 1; j > 0; --j) {
        const i64 r = i64(ph.uniform(uint64_t(j), uint32_t(epoch), uint32_t(s)) * double(j + 1));
        std::swap(perm[size_t(j)], perm[size_t(r < j ? r : j)]);
      }
      perm_epoch_[size_t(s)] = epoch;
    }
    w = perm[size_t(w)];
  }
  return w;
}

// contract: C5.order C5.tokens C5.mask C5.packing
i64 TokenData::window(i64 i, int32_t* inputs, int32_t* targets, int32_t* doc_start) const {
  return scan(i, inputs, targets, doc_start);
}

i64 TokenData::count_targets(i64 i) const { return masks_targets() ? scan(i, nullptr, nullptr, nullptr) : L_; }

// Window i's targets that count; writes inputs, targets and doc_start where they are not null.
i64 TokenData::scan(i64 i, int32_t* inputs, int32_t* targets, int32_t* doc_start) const {
  const auto [s, k] = locate(i);
  const TokenSource& src = *sources_[size_t(s)];
  const i64 p = source_window(s, k) * L_;
  i64 counted = 0;
  // Packed documents: walk the document starts through the window (d = the document of the current token).
  i64 d = reset_attention_ ? src.doc_of(p) : 0;
  for (int t = 0; t < L_; ++t) {
    bool counts = !mask_prompt_ || src.counts(p + t + 1);
    if (reset_attention_) {
      while (src.doc(d + 1) <= uint64_t(p + t)) ++d;
      if (doc_start) doc_start[t] = int32_t(std::max<i64>(i64(src.doc(d)) - p, 0));
      if (src.doc(d + 1) == uint64_t(p + t + 1)) counts = false;  // the next document's first token: not predictable
    }
    if (inputs) inputs[t] = int32_t(src.token(p + t));
    if (targets) targets[t] = counts ? int32_t(src.token(p + t + 1)) : kMaskedTarget;
    counted += counts;
  }
  return counted;
}

}  // namespace moe
