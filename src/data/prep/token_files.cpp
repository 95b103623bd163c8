// Owns TokenFiles: the little-endian token/mask/offset files of `moe-prep build` and their atomic publication (DESIGN §6 C6.prep).
#include "data/prep/token_files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace moe {

namespace {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moe-prep writes little-endian files by storing host integers: add byte swapping for this host"
#endif

[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw Error(ErrorKind::Internal, what + " " + path + ": " + std::strerror(errno));
}

}  // namespace

TokenFiles::TokenFiles(std::string out_dir) : dir_(std::move(out_dir)) {
  struct stat st;
  if (::stat(dir_.c_str(), &st) != 0) {
    if (::mkdir(dir_.c_str(), 0777) != 0) io_fail("cannot create directory", dir_);
  } else {
    MT_INPUT_CHECK(S_ISDIR(st.st_mode), "--out ", dir_, " exists and is not a directory");
  }
  open(tokens_, "tokens.bin");
  open(mask_, "loss_mask.bin");
  open(docs_, "docs.bin");
}

TokenFiles::~TokenFiles() {
  for (Out* o : {&tokens_, &mask_, &docs_}) {
    if (o->f) std::fclose(o->f);
    if (!committed_) ::unlink((o->path + ".tmp").c_str());
  }
}

void TokenFiles::open(Out& o, const std::string& name) {
  o.path = dir_ + "/" + name;
  const std::string tmp = o.path + ".tmp";
  o.f = std::fopen(tmp.c_str(), "wb");
  if (!o.f) io_fail("cannot create", tmp);
  std::setvbuf(o.f, nullptr, _IOFBF, size_t(1) << 20);
}

void TokenFiles::write(Out& o, const void* p, size_t n) {
  if (n && std::fwrite(p, 1, n, o.f) != n) io_fail("cannot write", o.path + ".tmp");
}

void TokenFiles::close(Out& o) {
  const std::string tmp = o.path + ".tmp";
  if (std::fflush(o.f) != 0 || ::fsync(::fileno(o.f)) != 0) io_fail("cannot write", tmp);
  if (std::fclose(o.f) != 0) {
    o.f = nullptr;
    io_fail("cannot close", tmp);
  }
  o.f = nullptr;
}

// contract: C6.prep
void TokenFiles::append(const std::vector<Tokenizer::Id>& ids, const std::vector<uint8_t>& mask) {
  MT_CHECK(ids.size() == mask.size());
  const uint64_t start = num_tokens_;
  write(docs_, &start, sizeof start);
  write(tokens_, ids.data(), ids.size() * sizeof(Tokenizer::Id));
  write(mask_, mask.data(), mask.size());
  for (uint8_t m : mask) num_loss_ += m;
  num_tokens_ += ids.size();
  ++num_docs_;
}

void TokenFiles::commit(const std::string& meta_json) {
  write(docs_, &num_tokens_, sizeof num_tokens_);
  for (Out* o : {&tokens_, &mask_, &docs_}) close(*o);
  const std::string meta = dir_ + "/meta.json";
  if (::unlink(meta.c_str()) != 0 && errno != ENOENT) io_fail("cannot remove the old", meta);
  for (Out* o : {&tokens_, &mask_, &docs_})
    if (::rename((o->path + ".tmp").c_str(), o->path.c_str()) != 0) io_fail("cannot rename into place", o->path);
  committed_ = true;
  Out m;
  m.path = meta;
  const std::string tmp = meta + ".tmp";
  m.f = std::fopen(tmp.c_str(), "wb");
  if (!m.f) io_fail("cannot create", tmp);
  write(m, meta_json.data(), meta_json.size());
  close(m);
  if (::rename(tmp.c_str(), meta.c_str()) != 0) io_fail("cannot rename into place", meta);
}

}  // namespace moe
