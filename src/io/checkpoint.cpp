// Owns the parallel-HDF5 reading and writing of checkpoints: collective dataset creation, one hyperslab union per rank and tensor.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include "io/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <unordered_map>

#include "core/error.h"
#include "io/checksum.h"

namespace moe {

namespace {

#define MT_H5(expr) ::moe::h5_ok((expr), #expr, __FILE__, __LINE__)
template <typename H>
H h5_ok(H v, const char* what, const char* file, int line) {
  if (v < 0) detail::raise(ErrorKind::Internal, file, line, "HDF5 call failed: ", what);
  return v;
}

// Closes an HDF5 handle at scope exit.
struct H5Id {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  H5Id(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~H5Id() {
    if (id >= 0 && close) close(id);
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  operator hid_t() const { return id; }
};

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

bool read_u64_attr(hid_t loc, const char* name, uint64_t* v) {
  if (H5Aexists(loc, name) <= 0) return false;
  const hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
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
  MT_INPUT_CHECK(H5Aexists(loc, name) > 0, "checkpoint '", path, "': missing attribute /meta/", name);
  H5Id a(MT_H5(H5Aopen(loc, name, H5P_DEFAULT)), H5Aclose);
  int64_t v = 0;
  MT_H5(H5Aread(a, H5T_NATIVE_INT64, &v));
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

std::string read_str_attr(hid_t loc, const char* name) {
  H5Id a(MT_H5(H5Aopen(loc, name, H5P_DEFAULT)), H5Aclose);
  H5Id type(MT_H5(H5Aget_type(a)), H5Tclose);
  std::string s(H5Tget_size(type), '\0');
  MT_H5(H5Aread(a, type, s.data()));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

// Silences HDF5's own error printing while probing files that may be broken.
struct QuietH5 {
  H5E_auto2_t fn = nullptr;
  void* data = nullptr;
  QuietH5() {
    H5Eget_auto2(H5E_DEFAULT, &fn, &data);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietH5() { H5Eset_auto2(H5E_DEFAULT, fn, data); }
};

}  // namespace

void write_checkpoint_file(const std::string& path, Communicator& world, const std::vector<TensorDecl>& tensors,
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
  {
    H5Id gm(MT_H5(H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose);
    H5Id go(MT_H5(H5Gcreate2(file, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose);
    for (const TensorDecl& t : tensors) {
      {
        H5Id d(create_dataset(gm, t.name.c_str(), t.shape), H5Dclose);
        transfer_piece(d, t.shape, find(pm, t.name), dxpl, true);
        write_u64_attr(d, "checksum", t.checksum[0]);
      }
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
    if (!meta.select_bias.empty()) {
      const std::vector<i64> shape = {i64(meta.select_bias.size()), i64(meta.select_bias[0].size())};
      std::vector<float> flat;
      for (const auto& l : meta.select_bias) flat.insert(flat.end(), l.begin(), l.end());
      H5Id d(create_dataset(meta_g, "select_bias", shape), H5Dclose);
      TensorPiece p{"select_bias", 0, i64(flat.size()), flat.data()};
      transfer_piece(d, shape, world.rank() == 0 ? &p : nullptr, dxpl, true);
      write_u64_attr(d, "checksum", piece_checksum(flat.data(), 0, i64(flat.size())));
    }
  }
  // Written last: a file without it is never taken for a checkpoint.
  write_i64_attr(file, "complete", 1);
  MT_H5(H5Fflush(file, H5F_SCOPE_GLOBAL));
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  QuietH5 quiet;
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  MT_INPUT_CHECK(f >= 0, "checkpoint '", path, "': cannot be opened as HDF5 (missing, truncated or not a checkpoint)");
  H5Id file(f, H5Fclose);
  MT_INPUT_CHECK(H5Aexists(file, "complete") > 0, "checkpoint '", path, "' is incomplete (its write was interrupted)");
  MT_INPUT_CHECK(H5Lexists(file, "meta", H5P_DEFAULT) > 0, "checkpoint '", path, "': no /meta group");
  H5Id g(MT_H5(H5Gopen2(file, "meta", H5P_DEFAULT)), H5Gclose);
  CheckpointMeta m;
  m.format_version = int(read_i64_attr(g, "format_version", path));
  MT_INPUT_CHECK(m.format_version == kCheckpointFormatVersion, "checkpoint '", path, "': format version ",
                 m.format_version, ", this build reads ", kCheckpointFormatVersion);
  m.step = read_i64_attr(g, "step", path);
  m.tokens_seen = read_i64_attr(g, "tokens_seen", path);
  m.data_position = read_i64_attr(g, "data_position", path);
  m.world = int(read_i64_attr(g, "world", path));
  m.ep = int(read_i64_attr(g, "ep", path));
  m.zero = int(read_i64_attr(g, "zero", path));
  m.seed = (unsigned long long)read_i64_attr(g, "seed", path);
  m.config_yaml = read_str_attr(g, "config");
  if (H5Lexists(g, "select_bias", H5P_DEFAULT) > 0) {
    H5Id d(MT_H5(H5Dopen2(g, "select_bias", H5P_DEFAULT)), H5Dclose);
    H5Id sp(MT_H5(H5Dget_space(d)), H5Sclose);
    hsize_t dims[2] = {0, 0};
    MT_H5(H5Sget_simple_extent_dims(sp, dims, nullptr));
    std::vector<float> flat(dims[0] * dims[1]);
    uint64_t want = 0;
    MT_INPUT_CHECK(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, flat.data()) >= 0 &&
                       read_u64_attr(d, "checksum", &want) && want == piece_checksum(flat.data(), 0, i64(flat.size())),
                   "checkpoint '", path, "': /meta/select_bias fails its checksum");
    m.select_bias.assign(dims[0], std::vector<float>(dims[1]));
    for (hsize_t l = 0; l < dims[0]; ++l)
      std::copy(flat.begin() + l * dims[1], flat.begin() + (l + 1) * dims[1], m.select_bias[l].begin());
  }
  return m;
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
  QuietH5 quiet;
  std::string problem;
  {
    H5Id fapl(file_access(world), H5Pclose);
    const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
    if (f < 0) problem = "cannot be opened";
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
      for (int k = 0; k < 3 && problem.empty(); ++k) {
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

std::string verify_checkpoint(const std::string& path) {
  QuietH5 quiet;
  try {
    read_checkpoint_meta(path);
  } catch (const Error& e) {
    return e.what();
  }
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  // Read every dataset in full and recompute its checksum.
  struct Ctx {
    std::string bad;
    std::vector<float> buf;
  } ctx;
  auto visit = [](hid_t obj, const char* name, const H5O_info_t* info, void* op) -> herr_t {
    auto* c = static_cast<Ctx*>(op);
    if (info->type != H5O_TYPE_DATASET) return 0;
    const hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d < 0) {
      c->bad = std::string("cannot open dataset ") + name;
      return 1;
    }
    const hid_t sp = H5Dget_space(d);
    const hssize_t n = H5Sget_simple_extent_npoints(sp);
    c->buf.resize(size_t(std::max<hssize_t>(n, 1)));
    uint64_t want = 0;
    const bool has = read_u64_attr(d, "checksum", &want);
    const herr_t rc = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, c->buf.data());
    H5Sclose(sp);
    H5Dclose(d);
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
