// Owns reading token/text files, id validation and the (optionally shuffled) window order.
#include "data/token_data.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "core/rng.h"

namespace moe {

static std::vector<unsigned char> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MT_INPUT_CHECK(f.good(), "data.path: cannot open '", path, "'; check the path (relative paths are resolved from the working directory)");
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

i64 check_token_file(const DataConfig& d, int vocab, int seq_len, DataScan scan) {
  namespace fs = std::filesystem;
  MT_INPUT_CHECK(!d.path.empty(), "data.path is not set; give a token file (data.format: tokens) or a text file (data.format: text)");
  std::error_code ec;
  const fs::file_status st = fs::status(d.path, ec);
  MT_INPUT_CHECK(fs::exists(st), "data.path: cannot open '", d.path, "': no such file; check the path (relative paths are resolved from the working directory)");
  MT_INPUT_CHECK(fs::is_regular_file(st), "data.path '", d.path, "' is not a regular file (a directory or device?); give a token or text file");
  const i64 bytes = i64(fs::file_size(d.path, ec));
  MT_INPUT_CHECK(!ec, "data.path: cannot read the size of '", d.path, "': ", ec.message());
  const i64 es = d.format == DataFormat::Text ? 1 : d.dtype == TokenDtype::U16 ? 2 : 4;
  if (d.format == DataFormat::Text)
    MT_INPUT_CHECK(vocab >= 256, "data.format: text uses byte-level tokens 0..255, so model.vocab_size must be >= 256, got ", vocab);
  else
    MT_INPUT_CHECK(bytes % es == 0, "data.path '", d.path, "': size ", bytes, " bytes is not a multiple of ", es,
                   " (data.dtype ", es == 2 ? "uint16" : "uint32", "); is data.dtype right?");
  const i64 ntok = bytes / es;
  MT_INPUT_CHECK(ntok >= 1 && (ntok - 1) / seq_len >= 1, "data.path '", d.path, "': ", ntok,
                 " tokens is shorter than one window of train.seq_len + 1 = ", seq_len + 1, " tokens");
  if (scan == DataScan::Ids && d.format != DataFormat::Text) {
    std::ifstream f(d.path, std::ios::binary);
    MT_INPUT_CHECK(f.good(), "data.path: cannot open '", d.path, "'");
    std::vector<unsigned char> buf(size_t(es) << 20);
    i64 pos = 0;
    while (f) {
      f.read(reinterpret_cast<char*>(buf.data()), std::streamsize(buf.size()));
      const i64 got = i64(f.gcount()) / es;
      for (i64 i = 0; i < got; ++i, ++pos) {
        uint32_t v = 0;
        for (i64 b = 0; b < es; ++b) v |= uint32_t(buf[size_t(i * es + b)]) << (8 * b);
        MT_INPUT_CHECK(v < uint32_t(vocab), "data.path '", d.path, "': token id ", v, " at position ", pos,
                       " is >= model.vocab_size ", vocab, "; was the file made with another tokenizer?");
      }
    }
    MT_INPUT_CHECK(pos == ntok, "data.path '", d.path, "': read ", pos, " of ", ntok, " tokens");
  }
  return ntok;
}

TokenData::TokenData(const DataConfig& d, int vocab, int seq_len, uint64_t seed)
    : L_(seq_len), shuffle_(d.shuffle), seed_(seed) {
  MT_INPUT_CHECK(!d.path.empty(), "data.path is not set; give a token file (data.format: tokens) or a text file (data.format: text)");
  if (d.format == DataFormat::Jsonl)
    MT_INPUT_FAIL("data.format: jsonl needs the tokenizer and chat-template support, which this build does not have yet; "
                  "use data.format: tokens (pre-tokenized uint32/uint16) or text (byte-level)");
  if (d.reset_attention)
    MT_INPUT_FAIL("data.reset_attention: true is not supported yet (document-packed attention lands with the data issue)");
  const std::vector<unsigned char> raw = read_all(d.path);
  if (d.format == DataFormat::Text) {
    MT_INPUT_CHECK(vocab >= 256, "data.format: text uses byte-level tokens 0..255, so model.vocab_size must be >= 256, got ", vocab);
    tokens_.assign(raw.begin(), raw.end());
  } else {
    const size_t es = d.dtype == TokenDtype::U16 ? 2 : 4;
    MT_INPUT_CHECK(raw.size() % es == 0, "data.path '", d.path, "': size ", raw.size(), " bytes is not a multiple of ", es,
                   " (data.dtype ", es == 2 ? "uint16" : "uint32", "); is data.dtype right?");
    tokens_.resize(raw.size() / es);
    for (size_t i = 0; i < tokens_.size(); ++i) {
      uint32_t v = 0;
      for (size_t b = 0; b < es; ++b) v |= uint32_t(raw[i * es + b]) << (8 * b);
      MT_INPUT_CHECK(v < uint32_t(vocab), "data.path '", d.path, "': token id ", v, " at position ", i,
                     " is >= model.vocab_size ", vocab, "; was the file made with another tokenizer?");
      tokens_[i] = int32_t(v);
    }
  }
  n_windows_ = tokens_.empty() ? 0 : (i64(tokens_.size()) - 1) / L_;
  MT_INPUT_CHECK(n_windows_ >= 1, "data.path '", d.path, "': ", tokens_.size(), " tokens is shorter than one window of train.seq_len + 1 = ",
                 L_ + 1, " tokens");
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
