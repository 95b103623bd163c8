// Owns the parallel-HDF5 reading and writing of checkpoints: collective dataset creation, one hyperslab union per rank and tensor.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include "io/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <unordered_map>

#include "core/error.h"
#include "io/checksum.h"
#include "io/fault_inject.h"

namespace moe {

namespace {

// The newest failure met in this thread's HDF5 calls: the call and the OS reason behind it.
thread_local std::string g_failed_call, g_failure_reason;

// Maps an MPI-IO error string (MPI_Error_string) to the OS error it stands for, or 0.
int errno_of_mpi_string(const std::string& s) {
  static const struct {
    const char* name;
    int err;
  } map[] = {{"MPI_ERR_NO_SPACE", ENOSPC}, {"MPI_ERR_QUOTA", EDQUOT},       {"MPI_ERR_ACCESS", EACCES},
             {"MPI_ERR_READ_ONLY", EROFS}, {"MPI_ERR_NO_SUCH_FILE", ENOENT}, {"MPI_ERR_IO", EIO}};
  for (const auto& m : map)
    if (s.find(m.name) != std::string::npos) return m.err;
  return 0;
}

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

// The OS reason of the failure on HDF5's error stack of this thread: the file driver's "errno = N" (sec2) or
// the MPI error class (MPI-IO); else HDF5's innermost description. Clears the stack.
std::string h5_failure_reason() {
  struct Walk {
    int err = 0;
    std::string innermost;
  } w;
  auto cb = [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
    auto* w = static_cast<Walk*>(data);
    const std::string d = e->desc ? e->desc : "";
    const size_t at = d.find("errno = ");
    if (w->err == 0 && at != std::string::npos) w->err = std::atoi(d.c_str() + at + 8);
    if (w->err == 0) w->err = errno_of_mpi_string(d);
    if (!d.empty()) w->innermost = d;
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, cb, &w);
  H5Eclear2(H5E_DEFAULT);
  if (w.err > 0) return errno_text(w.err);
  return w.innermost.empty() ? "unknown HDF5 error" : "HDF5: " + w.innermost;
}

#define MT_H5(expr) ::moe::h5_ok((expr), #expr, __FILE__, __LINE__)
template <typename H>
H h5_ok(H v, const char* what, const char* file, int line) {
  if (v < 0) {
    g_failed_call = what;
    g_failure_reason = h5_failure_reason();
    detail::raise(ErrorKind::Internal, file, line, "HDF5 call failed: ", what, ": ", g_failure_reason);
  }
  return v;
}

// Non-zero while this thread writes a checkpoint collectively (MPI-IO): a rank that fails then must not
// run collective closes while unwinding (its peers may be inside another collective call and never join);
// its handles are left open and the world is aborted by the caller.
thread_local int g_collective_write = 0;

// Closes an HDF5 handle at scope exit (not while unwinding out of a collective write, see above).
struct H5Id {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  H5Id(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~H5Id() {
    if (g_collective_write > 0 && std::uncaught_exceptions() > 0) return;
    if (id >= 0 && close) close(id);
  }
  // Hands the handle to the caller (for a checked close).
  hid_t release() {
    const hid_t i = id;
    id = -1;
    return i;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  operator hid_t() const { return id; }
};

// HDF5's exit handler closes files still open at exit; after a failed write it retries the failing flush
// and crashes. Every file we open is closed on the success paths, so the handler is turned off (before the
// library's first use) and a failed write's handles simply end with the process.
void h5_init() {
  static const bool done = [] {
    H5dont_atexit();
    return true;
  }();
  (void)done;
}

bool use_mpio(Communicator& world) { return world.mpi_handle() != nullptr; }

hid_t file_access(Communicator& world) {
  hid_t fapl = MT_H5(H5Pcreate(H5P_FILE_ACCESS));
  // Object headers gathered in 4 MiB blocks and a 1.10-or-later format: tensor data then lies in long
  // sequential stretches instead of between small metadata records.
  MT_H5(H5Pset_meta_block_size(fapl, 4 << 20));
  MT_H5(H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST));
  if (use_mpio(world)) MT_H5(H5Pset_fapl_mpio(fapl, *static_cast<const MPI_Comm*>(world.mpi_handle()), MPI_INFO_NULL));
  return fapl;
}

hid_t transfer(Communicator& world) {
  hid_t dxpl = MT_H5(H5Pcreate(H5P_DATASET_XFER));
  if (use_mpio(world)) MT_H5(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
  return dxpl;
}

// Flat range [b, e) of a 1-D or 2-D tensor as a union of hyperslabs (row-major order = flat order).
void select_range(hid_t space, const std::vector<i64>& shape, i64 b, i64 e) {
  MT_H5(H5Sselect_none(space));
  if (e <= b) return;
  if (shape.size() == 1) {
    const hsize_t start[1] = {hsize_t(b)}, count[1] = {hsize_t(e - b)};
    MT_H5(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr));
    return;
  }
  MT_CHECK(shape.size() == 2, "checkpoint tensors are 1-D or 2-D");
  const i64 C = shape[1];
  const i64 r0 = b / C, c0 = b % C, r1 = (e - 1) / C, c1 = (e - 1) % C;
  bool first = true;
  auto add = [&](i64 r, i64 c, i64 nr, i64 nc) {
    if (nr <= 0 || nc <= 0) return;
    const hsize_t start[2] = {hsize_t(r), hsize_t(c)}, count[2] = {hsize_t(nr), hsize_t(nc)};
    MT_H5(H5Sselect_hyperslab(space, first ? H5S_SELECT_SET : H5S_SELECT_OR, start, nullptr, count, nullptr));
    first = false;
  };
  if (r0 == r1) {
    add(r0, c0, 1, c1 - c0 + 1);
    return;
  }
  // Partial first row, whole rows as one block, partial last row: a whole tensor is a single hyperslab,
  // which keeps HDF5 on its fast contiguous path.
  const i64 full0 = c0 == 0 ? r0 : r0 + 1, full1 = c1 == C - 1 ? r1 : r1 - 1;
  if (c0 != 0) add(r0, c0, 1, C - c0);
  add(full0, 0, full1 - full0 + 1, C);
  if (c1 != C - 1) add(r1, 0, 1, c1 + 1);
}

std::unordered_map<std::string, const TensorPiece*> by_name(const std::vector<TensorPiece>& v) {
  std::unordered_map<std::string, const TensorPiece*> m;
  for (const TensorPiece& p : v) {
    MT_CHECK(m.count(p.name) == 0, "two pieces of one tensor on one rank: ", p.name);
    m[p.name] = &p;
  }
  return m;
}

// Collective transfer of one dataset: every rank calls it, with or without a piece.
void transfer_piece(hid_t dset, const std::vector<i64>& shape, const TensorPiece* piece, hid_t dxpl, bool write) {
  H5Id fspace(MT_H5(H5Dget_space(dset)), H5Sclose);
  const i64 n = piece ? piece->end - piece->begin : 0;
  const hsize_t mdim[1] = {hsize_t(std::max<i64>(n, 1))};
  H5Id mspace(MT_H5(H5Screate_simple(1, mdim, nullptr)), H5Sclose);
  if (n > 0) {
    select_range(fspace, shape, piece->begin, piece->end);
  } else {
    MT_H5(H5Sselect_none(fspace));
    MT_H5(H5Sselect_none(mspace));
  }
  float dummy = 0;
  float* buf = n > 0 ? piece->data : &dummy;
  if (write) MT_H5(H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf));
  else MT_H5(H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf));
}

hid_t create_dataset(hid_t loc, const char* name, const std::vector<i64>& shape) {
  // Contiguous layout: the fast path of MPI-IO; integrity comes from our own per-tensor checksums.
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  H5Id space(MT_H5(H5Screate_simple(int(dims.size()), dims.data(), nullptr)), H5Sclose);
  H5Id dcpl(MT_H5(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
  MT_H5(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY));
  MT_H5(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
  return MT_H5(H5Dcreate2(loc, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
}

void write_u64_attr(hid_t loc, const char* name, uint64_t v) {
  H5Id space(MT_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  H5Id a(MT_H5(H5Acreate2(loc, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  MT_H5(H5Awrite(a, H5T_NATIVE_UINT64, &v));
}

// A scalar attribute's handle after checking it holds one value of `cls` (integer or string): a hostile file
// may store any type or shape under our names. Returns -1 (and the reason) when it does not.
hid_t open_scalar_attr(hid_t loc, const char* name, H5T_class_t cls, std::string* why) {
  if (H5Aexists(loc, name) <= 0) {
    *why = "missing";
    return -1;
  }
  const hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  if (a < 0) {
    *why = "unreadable";
    return -1;
  }
  const hid_t type = H5Aget_type(a), space = H5Aget_space(a);
  const bool ok = type >= 0 && space >= 0 && H5Tget_class(type) == cls && H5Sget_simple_extent_npoints(space) == 1 &&
                  (cls != H5T_STRING || H5Tis_variable_str(type) == 0);
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  if (!ok) {
    H5Aclose(a);
    *why = cls == H5T_STRING ? "not a fixed-length string" : "not a single integer";
    return -1;
  }
  return a;
}

bool read_u64_attr(hid_t loc, const char* name, uint64_t* v) {
  std::string why;
  const hid_t a = open_scalar_attr(loc, name, H5T_INTEGER, &why);
  if (a < 0) return false;
  const bool ok = H5Aread(a, H5T_NATIVE_UINT64, v) >= 0;
  H5Aclose(a);
  return ok;
}

void write_i64_attr(hid_t loc, const char* name, i64 v) {
  H5Id space(MT_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  H5Id a(MT_H5(H5Acreate2(loc, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  MT_H5(H5Awrite(a, H5T_NATIVE_INT64, &v));
}

i64 read_i64_attr(hid_t loc, const char* name, const std::string& path) {
  std::string why;
  const hid_t id = open_scalar_attr(loc, name, H5T_INTEGER, &why);
  MT_INPUT_CHECK(id >= 0, "checkpoint '", path, "': attribute /meta/", name, " is ", why);
  H5Id a(id, H5Aclose);
  int64_t v = 0;
  MT_INPUT_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v) >= 0, "checkpoint '", path, "': attribute /meta/", name,
                 " cannot be read as a 64-bit integer");
  return v;
}

void write_str_attr(hid_t loc, const char* name, const std::string& s) {
  H5Id type(MT_H5(H5Tcopy(H5T_C_S1)), H5Tclose);
  MT_H5(H5Tset_size(type, std::max<size_t>(s.size(), 1)));
  H5Id space(MT_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  H5Id a(MT_H5(H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  std::string buf = s.empty() ? std::string(1, '\0') : s;
  MT_H5(H5Awrite(a, type, buf.data()));
}

constexpr size_t kMaxConfigBytes = 16u << 20;  // the resolved config YAML is a few KiB

std::string read_str_attr(hid_t loc, const char* name, const std::string& path) {
  std::string why;
  const hid_t id = open_scalar_attr(loc, name, H5T_STRING, &why);
  MT_INPUT_CHECK(id >= 0, "checkpoint '", path, "': attribute /meta/", name, " is ", why);
  H5Id a(id, H5Aclose);
  H5Id ftype(MT_H5(H5Aget_type(a)), H5Tclose);
  const size_t n = H5Tget_size(ftype);
  MT_INPUT_CHECK(n > 0 && n <= kMaxConfigBytes, "checkpoint '", path, "': attribute /meta/", name, " has ", n,
                 " bytes (at most ", kMaxConfigBytes, ")");
  H5Id mtype(MT_H5(H5Tcopy(H5T_C_S1)), H5Tclose);
  MT_H5(H5Tset_size(mtype, n));
  std::string s(n, '\0');
  MT_INPUT_CHECK(H5Aread(a, mtype, s.data()) >= 0, "checkpoint '", path, "': attribute /meta/", name, " cannot be read");
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

// Silences HDF5's own error printing while probing files that may be broken or writing to a disk that may
// fail (the reason is taken from the error stack instead, see h5_failure_reason).
struct QuietH5 {
  H5E_auto2_t fn = nullptr;
  void* data = nullptr;
  QuietH5() {
    H5Eget_auto2(H5E_DEFAULT, &fn, &data);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietH5() { H5Eset_auto2(H5E_DEFAULT, fn, data); }
};

// contract: C7.meta_checksum. FNV-1a over a canonical text of every /meta value (the bias by its own
// checksum), so an edited step, layout or config is caught like a flipped tensor bit.
uint64_t meta_checksum(const CheckpointMeta& m, bool has_bias, uint64_t bias_checksum) {
  std::string t = "format_version=" + std::to_string(m.format_version) + "\nstep=" + std::to_string(m.step) +
                  "\ntokens_seen=" + std::to_string(m.tokens_seen) + "\ndata_position=" + std::to_string(m.data_position) +
                  "\nworld=" + std::to_string(m.world) + "\nep=" + std::to_string(m.ep) + "\nzero=" +
                  std::to_string(m.zero) + "\nseed=" + std::to_string(i64(m.seed)) + "\nselect_bias=" +
                  (has_bias ? std::to_string(bias_checksum) : std::string("none")) + "\nconfig=" + m.config_yaml;
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : t) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Bytes a checkpoint of these tensors occupies at least: three fp32 copies of each, the bias and the config,
// plus a small allowance for HDF5's object headers.
i64 expected_bytes(const std::vector<TensorDecl>& tensors, const CheckpointMeta& meta) {
  i64 n = 0;
  for (const TensorDecl& t : tensors) {
    i64 e = 1;
    for (i64 d : t.shape) e *= d;
    n += (t.moments == Moments::Stored ? 3 : 1) * (4 * e + 1024);
  }
  for (const auto& l : meta.select_bias) n += 4 * i64(l.size());
  return n + i64(meta.config_yaml.size()) + (64 << 10);
}

// Rank 0 reserves the temporary's size with fallocate before any collective HDF5 call, and every rank learns
// the verdict: a full disk, a quota, a read-only or forbidden directory then stops all ranks here, where no
// HDF5 handle is open. A file system without fallocate skips the check (the write itself still reports).
// Returns the agreed errno (0 = go on).
int preflight(const std::string& path, Communicator& world, i64 bytes) {
  double err = 0;
  if (world.rank() == 0 && !injected_off("ckpt_preflight")) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      err = errno;
    } else {
      const int rc = ::fallocate(fd, 0, 0, off_t(bytes));
      const int e = rc == 0 ? 0 : errno;
      if (rc != 0 && e != EOPNOTSUPP && e != ENOSYS && e != EINVAL) err = e;
      ::ftruncate(fd, 0);  // H5Fcreate truncates too; this hands the space back at once
      ::close(fd);
      if (err != 0) ::unlink(path.c_str());
    }
  }
  world.all_reduce_sum(&err, 1);
  return int(err);
}

// The collective write itself (see write_checkpoint_file); any failure raises with g_failure_reason set.
void write_checkpoint_body(const std::string& path, Communicator& world, const std::vector<TensorDecl>& tensors,
                           const std::vector<TensorPiece>& model, const std::vector<TensorPiece>& exp_avg,
                           const std::vector<TensorPiece>& exp_avg_sq, const CheckpointMeta& meta) {
  H5Id fapl(file_access(world), H5Pclose);
  H5Id file(MT_H5(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl)), H5Fclose);
  H5Id dxpl(transfer(world), H5Pclose);
  const auto pm = by_name(model), pa = by_name(exp_avg), pv = by_name(exp_avg_sq);
  auto find = [](const std::unordered_map<std::string, const TensorPiece*>& m, const std::string& n) -> const TensorPiece* {
    auto it = m.find(n);
    return it == m.end() ? nullptr : it->second;
  };
  const int injected = injected_fault("ckpt_write", world.rank());
  {
    H5Id gm(MT_H5(H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose);
    H5Id go(MT_H5(H5Gcreate2(file, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose);
    for (const TensorDecl& t : tensors) {
      {
        H5Id d(create_dataset(gm, t.name.c_str(), t.shape), H5Dclose);
        transfer_piece(d, t.shape, find(pm, t.name), dxpl, true);
        write_u64_attr(d, "checksum", t.checksum[0]);
        if (injected != 0) {
          // Test hook: fail here, with the peers already inside the next collective call.
          g_failed_call = "H5Dwrite, injected by MOE_FAULT_INJECT";
          g_failure_reason = errno_text(injected);
          MT_CHECK(false, "injected fault");
        }
      }
      if (t.moments == Moments::None) continue;
      H5Id g(MT_H5(H5Gcreate2(go, t.name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose);
      {
        H5Id d(create_dataset(g, "exp_avg", t.shape), H5Dclose);
        transfer_piece(d, t.shape, find(pa, t.name), dxpl, true);
        write_u64_attr(d, "checksum", t.checksum[1]);
      }
      H5Id d(create_dataset(g, "exp_avg_sq", t.shape), H5Dclose);
      transfer_piece(d, t.shape, find(pv, t.name), dxpl, true);
      write_u64_attr(d, "checksum", t.checksum[2]);
    }
  }
  {
    H5Id meta_g(MT_H5(H5Gcreate2(file, "meta", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose);
    write_i64_attr(meta_g, "format_version", meta.format_version);
    write_i64_attr(meta_g, "step", meta.step);
    write_i64_attr(meta_g, "tokens_seen", meta.tokens_seen);
    write_i64_attr(meta_g, "data_position", meta.data_position);
    write_i64_attr(meta_g, "world", meta.world);
    write_i64_attr(meta_g, "ep", meta.ep);
    write_i64_attr(meta_g, "zero", meta.zero);
    write_i64_attr(meta_g, "seed", i64(meta.seed));
    write_str_attr(meta_g, "config", meta.config_yaml);
    uint64_t bias_checksum = 0;
    if (!meta.select_bias.empty()) {
      const std::vector<i64> shape = {i64(meta.select_bias.size()), i64(meta.select_bias[0].size())};
      std::vector<float> flat;
      for (const auto& l : meta.select_bias) flat.insert(flat.end(), l.begin(), l.end());
      H5Id d(create_dataset(meta_g, "select_bias", shape), H5Dclose);
      TensorPiece p{"select_bias", 0, i64(flat.size()), flat.data()};
      transfer_piece(d, shape, world.rank() == 0 ? &p : nullptr, dxpl, true);
      bias_checksum = piece_checksum(flat.data(), 0, i64(flat.size()));
      write_u64_attr(d, "checksum", bias_checksum);
    }
    write_u64_attr(meta_g, "checksum", meta_checksum(meta, !meta.select_bias.empty(), bias_checksum));
  }
  // Written last: a file without it is never taken for a checkpoint.
  write_i64_attr(file, "complete", 1);
  MT_H5(H5Fflush(file, H5F_SCOPE_GLOBAL));
  MT_H5(H5Fclose(file.release()));  // checked: the close writes the last metadata
}

// Checkpoints are written in the HDF5 1.10 format (file_access: superblock version 3, version-2 object
// headers), in which every metadata object carries a checksum that HDF5 verifies before decoding it. Files of
// the older formats have no such checksums, and libhdf5 1.10 decodes a damaged one past its buffers (fuzzing
// found heap overflows under H5Aexists), so they are refused before HDF5 sees them. Returns "" or the problem.
// O_NONBLOCK: a FIFO named like a checkpoint must not block the open (it is refused below).
static std::string superblock_problem(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return std::string("cannot be opened: ") + std::strerror(errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return "is not a regular file";
  }
  static const unsigned char kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  int version = -1;
  // The superblock sits at offset 0 or after a user block of 512·2^k bytes.
  for (off_t at = 0; at + 9 <= st.st_size && version < 0; at = at == 0 ? 512 : at * 2) {
    unsigned char head[9];
    if (::pread(fd, head, sizeof head, at) != ssize_t(sizeof head)) break;
    if (std::memcmp(head, kSignature, 8) == 0) version = head[8];
  }
  ::close(fd);
  if (version < 0) return "is not an HDF5 file (no superblock signature)";
  if (version < 2)
    return "has an HDF5 superblock of version " + std::to_string(version) +
           " (no metadata checksums); moe-train writes version 3 and reads only files with checksummed metadata";
  return "";
}

// Limits that no checkpoint of a trainable model exceeds; larger values mean a damaged /meta.
constexpr i64 kMaxStep = 2147483647;  // steps are counted in int (Trainer) and uint32 (RNG)
constexpr i64 kMaxWorld = 1 << 20;
constexpr hsize_t kMaxBiasLayers = 4096, kMaxBiasExperts = 1 << 16;

// Reads and checks /meta (see read_checkpoint_meta); HDF5 failures raise Internal, turned into BadInput there.
CheckpointMeta read_meta_body(const std::string& path) {
  const std::string sb = superblock_problem(path);
  MT_INPUT_CHECK(sb.empty(), "checkpoint '", path, "' ", sb);
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  MT_INPUT_CHECK(f >= 0, "checkpoint '", path, "': cannot be opened as HDF5 (missing, truncated or not a checkpoint)");
  H5Id file(f, H5Fclose);
  MT_INPUT_CHECK(H5Aexists(file, "complete") > 0, "checkpoint '", path, "' is incomplete (its write was interrupted)");
  MT_INPUT_CHECK(H5Lexists(file, "meta", H5P_DEFAULT) > 0, "checkpoint '", path, "': no /meta group");
  H5O_info_t info;
  MT_INPUT_CHECK(H5Oget_info_by_name(file, "meta", &info, H5P_DEFAULT) >= 0 && info.type == H5O_TYPE_GROUP,
                 "checkpoint '", path, "': /meta is not a group");
  H5Id g(MT_H5(H5Gopen2(file, "meta", H5P_DEFAULT)), H5Gclose);
  CheckpointMeta m;
  const i64 version = read_i64_attr(g, "format_version", path);
  MT_INPUT_CHECK(version == 1 || version == kCheckpointFormatVersion, "checkpoint '", path, "': format version ",
                 version, ", this build reads 1 and ", kCheckpointFormatVersion);
  m.format_version = int(version);
  m.step = read_i64_attr(g, "step", path);
  m.tokens_seen = read_i64_attr(g, "tokens_seen", path);
  m.data_position = read_i64_attr(g, "data_position", path);
  const i64 world = read_i64_attr(g, "world", path), ep = read_i64_attr(g, "ep", path), zero = read_i64_attr(g, "zero", path);
  m.seed = (unsigned long long)read_i64_attr(g, "seed", path);
  m.config_yaml = read_str_attr(g, "config", path);
  auto range = [&](bool ok, const char* key, i64 v, const char* allowed) {
    MT_INPUT_CHECK(ok, "checkpoint '", path, "': /meta/", key, " = ", v, " is out of range (", allowed,
                   "); the file is damaged");
  };
  range(m.step >= 0 && m.step <= kMaxStep, "step", m.step, "0 .. 2^31-1");
  range(world >= 1 && world <= kMaxWorld, "world", world, "1 .. 2^20");
  range(ep >= 1 && ep <= world && world % ep == 0, "ep", ep, "a divisor of world");
  range(zero >= 0 && zero <= 3, "zero", zero, "0 .. 3");
  // data_position = step·B and tokens_seen = step·B·seq_len for some B, L >= 1 (B and L are checked against
  // the stored config by the trainer).
  const bool positions = m.step == 0 ? m.data_position == 0 && m.tokens_seen == 0
                                     : m.data_position > 0 && m.data_position % m.step == 0 && m.tokens_seen > 0 &&
                                           m.tokens_seen % m.data_position == 0;
  range(positions, "data_position", m.data_position, "step x global batch, with tokens_seen = data_position x seq_len");
  m.world = int(world);
  m.ep = int(ep);
  m.zero = int(zero);
  MT_INPUT_CHECK(!m.config_yaml.empty(), "checkpoint '", path, "': /meta/config is empty");
  uint64_t bias_checksum = 0;
  const bool has_bias = H5Lexists(g, "select_bias", H5P_DEFAULT) > 0;
  if (has_bias) {
    const hid_t did = H5Dopen2(g, "select_bias", H5P_DEFAULT);
    MT_INPUT_CHECK(did >= 0, "checkpoint '", path, "': /meta/select_bias is not a dataset");
    H5Id d(did, H5Dclose);
    H5Id sp(MT_H5(H5Dget_space(d)), H5Sclose);
    H5Id type(MT_H5(H5Dget_type(d)), H5Tclose);
    hsize_t dims[2] = {0, 0};
    MT_INPUT_CHECK(H5Tget_class(type) == H5T_FLOAT && H5Sget_simple_extent_ndims(sp) == 2 &&
                       H5Sget_simple_extent_dims(sp, dims, nullptr) == 2 && dims[0] >= 1 && dims[1] >= 1 &&
                       dims[0] <= kMaxBiasLayers && dims[1] <= kMaxBiasExperts,
                   "checkpoint '", path, "': /meta/select_bias is not a [layers, experts] float array");
    std::vector<float> flat(dims[0] * dims[1]);
    MT_INPUT_CHECK(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, flat.data()) >= 0 &&
                       read_u64_attr(d, "checksum", &bias_checksum) &&
                       bias_checksum == piece_checksum(flat.data(), 0, i64(flat.size())),
                   "checkpoint '", path, "': /meta/select_bias fails its checksum");
    MT_INPUT_CHECK(std::all_of(flat.begin(), flat.end(), [](float x) { return std::isfinite(x); }), "checkpoint '",
                   path, "': /meta/select_bias holds non-finite values");
    m.select_bias.assign(dims[0], std::vector<float>(dims[1]));
    for (hsize_t l = 0; l < dims[0]; ++l)
      std::copy(flat.begin() + l * dims[1], flat.begin() + (l + 1) * dims[1], m.select_bias[l].begin());
  }
  // Format 1 had no /meta checksum: its values are range-checked only.
  if (m.format_version >= 2) {
    uint64_t want = 0;
    MT_INPUT_CHECK(read_u64_attr(g, "checksum", &want), "checkpoint '", path, "': /meta has no checksum");
    MT_INPUT_CHECK(want == meta_checksum(m, has_bias, bias_checksum), "checkpoint '", path,
                   "': /meta fails its checksum (an attribute was edited or damaged)");
  }
  return m;
}

// MPI-IO may report a failed write without the OS error (a short write); a file system left without free
// blocks is then named as the cause. Otherwise `reason` is kept.
std::string infer_full_disk(const std::string& path, const std::string& reason) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct statvfs vfs;
  if (::statvfs(dir.c_str(), &vfs) != 0) return reason;
  const unsigned long long free_bytes = (unsigned long long)vfs.f_bavail * vfs.f_frsize;
  if (free_bytes >= (1ull << 20)) return reason;
  return std::string(std::strerror(ENOSPC)) + " (errno " + std::to_string(ENOSPC) + ", inferred: " +
         std::to_string(free_bytes >> 10) + " KiB left on its file system; " + reason + ")";
}

}  // namespace

void write_checkpoint_file(const std::string& path, Communicator& world, const std::vector<TensorDecl>& tensors,
                           const std::vector<TensorPiece>& model, const std::vector<TensorPiece>& exp_avg,
                           const std::vector<TensorPiece>& exp_avg_sq, const CheckpointMeta& meta) {
  h5_init();
  QuietH5 quiet;  // first: outlives every handle below
  const std::string where = "checkpoint write failed: '" + path + "': ";
  const char* untouched = "; the temporary was removed, published checkpoints and `latest` are untouched";
  const i64 need = expected_bytes(tensors, meta);
  if (const int err = preflight(path, world, need))
    detail::raise(ErrorKind::Internal, __FILE__, __LINE__, where, std::strerror(err), " (errno ", err, "; ", need >> 10,
                  " KiB needed)", untouched);
  const bool collective = use_mpio(world);
  g_collective_write += collective ? 1 : 0;
  g_failed_call.clear();
  g_failure_reason.clear();
  try {
    write_checkpoint_body(path, world, tensors, model, exp_avg, exp_avg_sq, meta);
  } catch (const Error& e) {
    g_collective_write -= collective ? 1 : 0;
    // This rank's handles stay open under MPI-IO (see H5Id); the caller aborts the world. The temporary goes
    // now: peers hold it open by descriptor, so removing the name is safe while they are still writing.
    std::string reason = g_failure_reason.empty() ? std::string(e.what()) : g_failure_reason;
    if (reason.find("errno") == std::string::npos) reason = infer_full_disk(path, reason);
    ::unlink(path.c_str());
    const std::string rank = world.size() > 1 ? " on rank " + std::to_string(world.rank()) : std::string();
    detail::raise(ErrorKind::Internal, __FILE__, __LINE__, where, reason,
                  g_failed_call.empty() ? std::string() : "; failed in " + g_failed_call + rank, untouched);
  }
  g_collective_write -= collective ? 1 : 0;
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  h5_init();
  QuietH5 quiet;
  try {
    return read_meta_body(path);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::BadInput) throw;
    // Any HDF5 failure while reading is the file's fault: bad input naming it.
    MT_INPUT_FAIL("checkpoint '", path, "' is unreadable: ", e.what());
  }
}

// Reads byte ranges of a file into memory with several preads in flight (OpenMP), in file order per thread.
template <typename R>
std::string read_ranges(const std::string& path, std::vector<R>& ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const R& a, const R& b) { return a.at < b.at; });
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return "cannot be opened for reading";
  int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
  for (long i = 0; i < long(ranges.size()); ++i) {
    char* dst = reinterpret_cast<char*>(ranges[size_t(i)].dst);
    size_t left = ranges[size_t(i)].bytes;
    off_t at = off_t(ranges[size_t(i)].at);
    while (left > 0) {
      const ssize_t n = ::pread(fd, dst, left, at);
      if (n <= 0) {
        bad = 1;
        break;
      }
      dst += n;
      at += n;
      left -= size_t(n);
    }
  }
  ::close(fd);
  return bad ? "truncated or unreadable tensor data" : "";
}

std::string read_checkpoint_tensors(const std::string& path, Communicator& world, std::vector<TensorDecl>& tensors,
                                    const std::vector<TensorPiece>& model, const std::vector<TensorPiece>& exp_avg,
                                    const std::vector<TensorPiece>& exp_avg_sq) {
  h5_init();
  QuietH5 quiet;
  std::string problem;
  {
    H5Id fapl(file_access(world), H5Pclose);
    problem = superblock_problem(path);
    const hid_t f = problem.empty() ? H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl) : -1;
    if (f < 0 && problem.empty()) problem = "cannot be opened";
    H5Id file(f, H5Fclose);
    // Independent reads: a rank that meets a broken dataset stops reading without leaving peers in a collective.
    H5Id dxpl(MT_H5(H5Pcreate(H5P_DATASET_XFER)), H5Pclose);
    const auto pm = by_name(model), pa = by_name(exp_avg), pv = by_name(exp_avg_sq);
    const std::unordered_map<std::string, const TensorPiece*>* maps[3] = {&pm, &pa, &pv};
    struct DirectRead {
      haddr_t at;
      size_t bytes;
      float* dst;
    };
    std::vector<DirectRead> direct;
    for (TensorDecl& t : tensors) {
      if (!problem.empty()) break;
      const std::string names[3] = {"/model/" + t.name, "/optim/" + t.name + "/exp_avg", "/optim/" + t.name + "/exp_avg_sq"};
      const int kinds = t.moments == Moments::Stored ? 3 : 1;
      for (int k = 0; k < kinds && problem.empty(); ++k) {
        if (H5Lexists(file, "/model", H5P_DEFAULT) <= 0 || H5Oexists_by_name(file, names[k].c_str(), H5P_DEFAULT) <= 0) {
          problem = "missing tensor " + names[k] + " (was it written for another model?)";
          break;
        }
        const hid_t d = H5Dopen2(file, names[k].c_str(), H5P_DEFAULT);
        if (d < 0) {
          problem = "cannot open " + names[k];
          break;
        }
        H5Id dd(d, H5Dclose);
        H5Id sp(H5Dget_space(d), H5Sclose);
        std::vector<hsize_t> dims(size_t(std::max(0, H5Sget_simple_extent_ndims(sp))));
        H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
        if (std::vector<i64>(dims.begin(), dims.end()) != t.shape) {
          problem = "tensor " + names[k] + " has another shape than this model's";
          break;
        }
        if (!read_u64_attr(d, "checksum", &t.checksum[k])) {
          problem = names[k] + " has no checksum";
          break;
        }
        auto it = maps[k]->find(t.name);
        const TensorPiece* piece = it == maps[k]->end() ? nullptr : it->second;
        if (!piece || piece->end <= piece->begin) continue;
        // A contiguous little-endian fp32 dataset is one byte range in the file: read the piece directly
        // (below, several reads in flight); anything else goes through HDF5.
        const haddr_t at = H5Dget_offset(d);
        H5Id type(H5Dget_type(d), H5Tclose);
        if (at != HADDR_UNDEF && H5Tequal(type, H5T_IEEE_F32LE) > 0) {
          direct.push_back({at + haddr_t(piece->begin) * 4, size_t(piece->end - piece->begin) * 4, piece->data});
          continue;
        }
        try {
          transfer_piece(d, t.shape, piece, dxpl, false);
        } catch (const Error&) {
          problem = "cannot read " + names[k];
        }
      }
    }
    if (problem.empty() && !direct.empty()) problem = read_ranges(path, direct);
  }
  // Same verdict everywhere: the first failing rank's reason is not shipped, only that one failed.
  double bad = problem.empty() ? 0.0 : 1.0;
  world.all_reduce_sum(&bad, 1);
  if (bad > 0 && problem.empty()) problem = "another rank could not read it";
  return problem;
}

std::vector<i64> checkpoint_tensor_shape(const std::string& path, const std::string& name) {
  h5_init();
  QuietH5 quiet;
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  const std::string ds = "/model/" + name;
  if (file < 0 || H5Lexists(file, "/model", H5P_DEFAULT) <= 0 || H5Oexists_by_name(file, ds.c_str(), H5P_DEFAULT) <= 0)
    return {};
  H5Id d(H5Dopen2(file, ds.c_str(), H5P_DEFAULT), H5Dclose);
  if (d < 0) return {};
  H5Id sp(H5Dget_space(d), H5Sclose);
  std::vector<hsize_t> dims(size_t(std::max(0, H5Sget_simple_extent_ndims(sp))));
  H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
  return std::vector<i64>(dims.begin(), dims.end());
}

std::string verify_checkpoint(const std::string& path) {
  h5_init();
  QuietH5 quiet;
  try {
    read_checkpoint_meta(path);
  } catch (const Error& e) {
    return e.what();
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "cannot be read";
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file < 0) return "cannot be opened as HDF5";
  // Read every dataset in full and recompute its checksum.
  struct Ctx {
    std::string bad;
    std::vector<float> buf;
    i64 file_bytes = 0;
  } ctx;
  ctx.file_bytes = i64(st.st_size);
  auto visit = [](hid_t obj, const char* name, const H5O_info_t* info, void* op) -> herr_t {
    auto* c = static_cast<Ctx*>(op);
    if (info->type != H5O_TYPE_DATASET) return 0;
    const hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d < 0) {
      c->bad = std::string("cannot open dataset ") + name;
      return 1;
    }
    H5Id dd(d, H5Dclose);
    H5Id sp(H5Dget_space(d), H5Sclose);
    H5Id type(H5Dget_type(d), H5Tclose);
    const hssize_t n = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    // Every dataset we write is uncompressed fp32: it cannot hold more values than the file has bytes / 4
    // (a damaged header may claim any size; this also bounds the buffer).
    if (type < 0 || H5Tget_class(type) != H5T_FLOAT || n < 0 || i64(n) > c->file_bytes / 4) {
      c->bad = std::string("dataset ") + name + " is not a float array that fits in the file";
      return 1;
    }
    c->buf.resize(size_t(std::max<hssize_t>(n, 1)));
    uint64_t want = 0;
    const bool has = read_u64_attr(d, "checksum", &want);
    const herr_t rc = n == 0 ? 0 : H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, c->buf.data());
    if (rc < 0 || !has) {
      c->bad = std::string("dataset ") + name + (rc < 0 ? " cannot be read" : " has no checksum");
      return 1;
    }
    if (piece_checksum(c->buf.data(), 0, i64(n)) != want) {
      c->bad = std::string("dataset ") + name + " fails its checksum (the file is corrupt)";
      return 1;
    }
    return 0;
  };
  if (H5Ovisit(file, H5_INDEX_NAME, H5_ITER_NATIVE, visit, &ctx) < 0 && ctx.bad.empty()) ctx.bad = "unreadable structure";
  return ctx.bad;
}

}  // namespace moe
