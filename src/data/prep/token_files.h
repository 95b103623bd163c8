// Owns writing the output directory of `moe-prep build` (tokens.bin, loss_mask.bin, docs.bin, meta.json), each through a temporary file renamed into place (DESIGN §6 C6.prep).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "data/tokenizer/tokenizer.h"

namespace moe {

// contract: C6.prep (file layout)
//   tokens.bin     uint32 little-endian token ids, the documents one after another
//   loss_mask.bin  one uint8 per token: 1 = the token is a prediction target in the loss, 0 = it is not
//   docs.bin       uint64 little-endian: each document's first token index in tokens.bin, then the token count
//   meta.json      written last (its presence means the other three are complete)
// Files are written as NAME.tmp and renamed at commit(); the old meta.json is removed before the first rename.
// I/O failures throw Error (Internal, exit 1) naming the file and the OS error.
class TokenFiles {
 public:
  explicit TokenFiles(std::string out_dir);  // creates out_dir (one level) when missing
  ~TokenFiles();                             // removes the temporary files unless committed
  TokenFiles(const TokenFiles&) = delete;
  TokenFiles& operator=(const TokenFiles&) = delete;

  void append(const std::vector<Tokenizer::Id>& ids, const std::vector<uint8_t>& mask);
  uint64_t num_docs() const { return num_docs_; }
  uint64_t num_tokens() const { return num_tokens_; }
  uint64_t num_loss_tokens() const { return num_loss_; }

  // Finishes the data files, renames them into place, then writes meta.json (pretty JSON text) the same way.
  void commit(const std::string& meta_json);

 private:
  struct Out {
    std::string path;
    std::FILE* f = nullptr;
  };
  void open(Out& o, const std::string& name);
  void write(Out& o, const void* p, size_t n);
  void close(Out& o);
  std::string dir_;
  Out tokens_, mask_, docs_;
  uint64_t num_docs_ = 0, num_tokens_ = 0, num_loss_ = 0;
  bool committed_ = false;
};

}  // namespace moe
