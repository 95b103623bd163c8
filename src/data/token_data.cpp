// Owns reading token/text files, id validation and the (optionally shuffled) window order.
#include "data/token_data.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "core/error.h"
#include "core/rng.h"

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

// An open regular file and its size. A directory, FIFO, device or socket is refused before any read (a FIFO
// would block, /dev/zero never ends, a directory reads as nothing).
struct OpenFile {
  int fd = -1;
  uint64_t size = 0;
  ~OpenFile() {
    if (fd >= 0) ::close(fd);
  }
};

void open_regular(const std::string& key, const std::string& path, OpenFile& f) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for regular files.
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  struct stat st;
  if (f.fd < 0) {
    const int e = errno;
    if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
      MT_INPUT_FAIL(key, " '", path, "' is ", file_kind(st.st_mode), ", not a regular file; give a token or text file");
    MT_INPUT_FAIL(key, ": cannot open '", path, "': ", std::strerror(e),
                  "; check the path (relative paths are resolved from the working directory)");
  }
  if (::fstat(f.fd, &st) != 0) MT_INPUT_FAIL(key, ": cannot stat '", path, "': ", std::strerror(errno));
  MT_INPUT_CHECK(S_ISREG(st.st_mode), key, " '", path, "' is ", file_kind(st.st_mode),
                 ", not a regular file; give a token or text file");
  f.size = uint64_t(st.st_size);
}

// Reads exactly `size` bytes of f in chunks of a multiple of every token size, handing each to take(p, n, offset).
template <class Take>
void read_chunks(const std::string& key, const std::string& path, const OpenFile& f, Take take) {
  std::vector<unsigned char> chunk(size_t(1) << 20);
  uint64_t done = 0;
  while (done < f.size) {
    const size_t want = size_t(std::min<uint64_t>(chunk.size(), f.size - done));
    const ssize_t got = ::pread(f.fd, chunk.data(), want, off_t(done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) MT_INPUT_FAIL(key, " '", path, "': read failed at byte ", done, ": ", std::strerror(errno));
    MT_INPUT_CHECK(got > 0, key, " '", path, "': the file shrank while being read (", done, " of ", f.size, " bytes)");
    take(chunk.data(), size_t(got), done);
    done += uint64_t(got);
  }
}

}  // namespace

i64 check_token_file(const DataConfig& d, int vocab, int seq_len, DataScan scan, const std::string& key) {
  MT_INPUT_CHECK(!d.path.empty(), key, " is not set; give a token file (data.format: tokens) or a text file (data.format: text)");
  OpenFile f;
  open_regular(key, d.path, f);  // a directory, FIFO, device or socket: exit 2 naming what it is, before any read
  const i64 bytes = i64(f.size);
  const i64 es = d.format == DataFormat::Text ? 1 : d.dtype == TokenDtype::U16 ? 2 : 4;
  if (d.format == DataFormat::Text)
    MT_INPUT_CHECK(vocab >= 256, "data.format: text uses byte-level tokens 0..255, so model.vocab_size must be >= 256, got ", vocab);
  else
    MT_INPUT_CHECK(bytes % es == 0, key, " '", d.path, "': size ", bytes, " bytes is not a multiple of ", es,
                   " (data.dtype ", es == 2 ? "uint16" : "uint32", "); is data.dtype right?");
  const i64 ntok = bytes / es;
  MT_INPUT_CHECK(ntok >= 1 && (ntok - 1) / seq_len >= 1, key, " '", d.path, "': ", ntok,
                 " tokens is shorter than one window of train.seq_len + 1 = ", i64(seq_len) + 1, " tokens");
  if (scan == DataScan::Ids && d.format != DataFormat::Text) {
    read_chunks(key, d.path, f, [&](const unsigned char* p, size_t n, uint64_t offset) {
      for (size_t i = 0; i + size_t(es) <= n; i += size_t(es)) {
        uint32_t v = 0;
        for (i64 b = 0; b < es; ++b) v |= uint32_t(p[i + size_t(b)]) << (8 * b);
        MT_INPUT_CHECK(v < uint32_t(vocab), key, " '", d.path, "': token id ", v, " at position ",
                       (offset + i) / uint64_t(es), " is >= model.vocab_size ", vocab,
                       "; was the file made with another tokenizer?");
      }
    });
  }
  return ntok;
}

TokenData::TokenData(const DataConfig& d, int vocab, int seq_len, uint64_t seed, const std::string& key)
    : L_(seq_len), shuffle_(d.shuffle), seed_(seed) {
  MT_INPUT_CHECK(!d.path.empty(), key, " is not set; give a token file (data.format: tokens) or a text file (data.format: text)");
  if (d.format == DataFormat::Jsonl)
    MT_INPUT_FAIL("data.format: jsonl needs the tokenizer and chat-template support, which this build does not have yet; "
                  "use data.format: tokens (pre-tokenized uint32/uint16) or text (byte-level)");
  if (d.reset_attention)
    MT_INPUT_FAIL("data.reset_attention: true is not supported yet (document-packed attention lands with the data issue)");
  const bool text = d.format == DataFormat::Text;
  if (text)
    MT_INPUT_CHECK(vocab >= 256, "data.format: text uses byte-level tokens 0..255, so model.vocab_size must be >= 256, got ", vocab);
  const size_t es = text ? 1 : d.dtype == TokenDtype::U16 ? 2 : 4;
  OpenFile f;
  open_regular(key, d.path, f);
  MT_INPUT_CHECK(f.size % es == 0, key, " '", d.path, "': size ", f.size, " bytes is not a multiple of ", es,
                 " (data.dtype ", es == 2 ? "uint16" : "uint32", "); is data.dtype right?");
  try {
    tokens_.reserve(size_t(f.size / es));
  } catch (const std::exception&) {  // bad_alloc / length_error: the file cannot be held
    MT_INPUT_FAIL(key, " '", d.path, "': ", f.size / es, " tokens (", f.size, " bytes) do not fit in memory");
  }
  read_chunks(key, d.path, f, [&](const unsigned char* p, size_t n, uint64_t offset) {
    for (size_t i = 0; i + es <= n; i += es) {
      uint32_t v = 0;
      for (size_t b = 0; b < es; ++b) v |= uint32_t(p[i + b]) << (8 * b);
      MT_INPUT_CHECK(v < uint32_t(vocab), key, " '", d.path, "': token id ", v, " at position ", (offset + i) / es,
                     " is >= model.vocab_size ", vocab, "; was the file made with another tokenizer?");
      tokens_.push_back(int32_t(v));
    }
  });
  n_windows_ = tokens_.empty() ? 0 : (i64(tokens_.size()) - 1) / L_;
  MT_INPUT_CHECK(n_windows_ >= 1, key, " '", d.path, "': ", tokens_.size(), " tokens is shorter than one window of train.seq_len + 1 = ",
                 i64(L_) + 1, " tokens");
}

// contract: C5.order C5.tokens
void TokenData::window(i64 i, int32_t* inputs, int32_t* targets) const {
  i64 w = i % n_windows_;
  if (shuffle_) {
    const i64 epoch = i / n_windows_;
    if (epoch != perm_epoch_) {
      // Fisher–Yates from Philox keyed by (seed, epoch): the same on every rank.
      perm_.resize(size_t(n_windows_));
      for (i64 j = 0; j < n_windows_; ++j) perm_[j] = j;
      const Philox ph(seed_, RngPurpose::Shuffle);
      for (i64 j = n_windows_ - 1; j > 0; --j) {
        const i64 r = i64(ph.uniform(uint64_t(j), uint32_t(epoch), 0) * double(j + 1));
        std::swap(perm_[j], perm_[r < j ? r : j]);
      }
      perm_epoch_ = epoch;
    }
    w = perm_[w];
  }
  const int32_t* src = tokens_.data() + w * L_;
  for (int t = 0; t < L_; ++t) {
    inputs[t] = src[t];
    targets[t] = src[t + 1];
  }
}

}  // namespace moe
