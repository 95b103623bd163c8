// Owns the safetensors reader/validator, dtype conversion and the atomic writer.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/json_file.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors I/O assumes a little-endian host"
#endif

namespace moe {

namespace {

// SAX handler that records the first repeated key of the top-level object (JSON already validated).
struct TopLevelKeys : nlohmann::json_sax<nlohmann::json> {
  int depth = 0;
  std::set<std::string> seen;
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool key(string_t& k) override {
    if (depth == 1 && !seen.insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

}  // namespace

using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeader = 100000000;  // safetensors' own limit on the header length

// Bits per element of every dtype string of the safetensors format; 0 = unknown.
int dtype_bits(const std::string& d) {
  static const std::pair<const char*, int> table[] = {
      {"BOOL", 8},        {"F4", 4},          {"F6_E2M3", 6},     {"F6_E3M2", 6},
      {"U8", 8},          {"I8", 8},          {"F8_E5M2", 8},     {"F8_E4M3", 8},
      {"F8_E8M0", 8},     {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"I16", 16},
      {"U16", 16},        {"F16", 16},        {"BF16", 16},       {"I32", 32},
      {"U32", 32},        {"F32", 32},        {"C64", 64},        {"F64", 64},
      {"I64", 64},        {"U64", 64}};
  for (const auto& [name, bits] : table)
    if (d == name) return bits;
  return 0;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // normal: rebias 15 → 127
  } else if (mant == 0) {
    bits = sign;  // ±0
  } else {  // subnormal: value = mant · 2^-24, normalise
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    bits = sign | (uint32_t(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

i64 TensorEntry::numel() const {
  i64 n = 1;
  for (i64 d : shape) n *= d;
  return n;
}

uint16_t f32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // NaN → quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return uint16_t(u >> 16);
}

float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

size_t safetensors_dtype_size(const std::string& dtype) {
  const int bits = dtype_bits(dtype);
  MT_INPUT_CHECK(bits > 0, "unknown safetensors dtype '", dtype, "'");
  return bits % 8 ? 0 : size_t(bits / 8);
}

bool convertible_to_f32(const std::string& d) {
  return d == "F32" || d == "BF16" || d == "F16" || d == "F64";
}

void convert_to_f32(const TensorEntry& t, float* dst) {
  const size_t n = size_t(t.numel());
  const uint8_t* s = t.data;
  if (t.dtype == "F32") {
    MT_CHECK(t.nbytes == n * 4, t.name);
    if (n) std::memcpy(dst, s, n * 4);
  } else if (t.dtype == "BF16") {
    MT_CHECK(t.nbytes == n * 2, t.name);
    for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(uint16_t(s[2 * i] | (s[2 * i + 1] << 8)));
  } else if (t.dtype == "F16") {
    MT_CHECK(t.nbytes == n * 2, t.name);
    for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(uint16_t(s[2 * i] | (s[2 * i + 1] << 8)));
  } else if (t.dtype == "F64") {
    MT_CHECK(t.nbytes == n * 8, t.name);
    for (size_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, s + 8 * i, 8);
      dst[i] = float(v);
    }
  } else {
    MT_INPUT_FAIL("tensor ", t.name, " has dtype ", t.dtype,
                  ", which cannot be loaded as floating point weights; allowed: F32, BF16, F16, F64");
  }
}

TensorEntry slice_elements(const TensorEntry& t, i64 first, i64 count) {
  const size_t es = safetensors_dtype_size(t.dtype);
  MT_CHECK(es > 0 && first >= 0 && count >= 0 && first + count <= t.numel(), t.name);
  TensorEntry v;
  v.name = t.name;
  v.dtype = t.dtype;
  v.shape = {count};
  v.data = t.data + size_t(first) * es;
  v.nbytes = size_t(count) * es;
  return v;
}

// ---------------------------------------------------------------- reader

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    unmap();
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_size_ = o.map_size_;
    tensors_ = std::move(o.tensors_);  // data pointers stay valid: the mapping does not move
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
    o.map_ = nullptr;
    o.map_size_ = 0;
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { unmap(); }

void SafetensorsFile::unmap() {
  if (map_) munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

const TensorEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const std::string where = "safetensors file " + path + ": ";

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) MT_INPUT_FAIL(where, "cannot open: ", std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MT_INPUT_FAIL(where, "not a regular file");
  }
  const uint64_t fsize = uint64_t(st.st_size);
  if (fsize < 8) {
    ::close(fd);
    MT_INPUT_FAIL(where, "truncated: file has ", fsize, " bytes, fewer than the 8-byte header length");
  }
  void* m = mmap(nullptr, size_t(fsize), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) MT_INPUT_FAIL(where, "cannot mmap: ", std::strerror(errno));
  f.map_ = m;
  f.map_size_ = size_t(fsize);
  const uint8_t* base = static_cast<const uint8_t*>(m);

  const uint64_t n = read_u64_le(base);
  MT_INPUT_CHECK(n <= kMaxHeader, where, "corrupt header: header length ", n, " exceeds the limit of ",
                 kMaxHeader, " bytes");
  MT_INPUT_CHECK(8 + n <= fsize, where, "truncated: file has ", fsize, " bytes, header says its JSON alone needs ",
                 8 + n);
  const char* hb = reinterpret_cast<const char*>(base + 8);
  MT_INPUT_CHECK(n >= 2 && hb[0] == '{', where, "corrupt header: the JSON header must start with '{'");

  // Parse, and catch duplicate top-level names (a plain parse keeps only the last one). The names are
  // collected by a SAX pass: nlohmann's callback parser rescans the parent object at the end of each child,
  // which is quadratic in the number of tensors (a 300k-entry header took minutes).
  const json h = parse_json_text(hb, hb + n, where + "corrupt header");
  TopLevelKeys keys;
  json::sax_parse(hb, hb + n, &keys);
  const std::string& dup = keys.duplicate;
  MT_INPUT_CHECK(dup.empty(), where, "corrupt header: tensor name '", brief_text(dup), "' appears twice");
  MT_INPUT_CHECK(h.is_object(), where, "corrupt header: the JSON header is not an object");

  const uint64_t buf_size = fsize - 8 - n;
  const uint8_t* buf = base + 8 + n;
  struct Span {
    uint64_t begin, end;
    size_t idx;
  };
  std::vector<Span> spans;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      MT_INPUT_CHECK(v.is_object(), where, "corrupt header: __metadata__ must be an object of strings");
      for (auto m2 = v.begin(); m2 != v.end(); ++m2) {
        MT_INPUT_CHECK(m2.value().is_string(), where, "corrupt header: __metadata__ value for '", brief_text(m2.key()),
                       "' is not a string");
        f.metadata_[m2.key()] = m2.value().get<std::string>();
      }
      continue;
    }
    const std::string tw = where + "corrupt header: tensor '" + brief_text(name) + "': ";
    MT_INPUT_CHECK(v.is_object(), tw, "entry is not an object");
    MT_INPUT_CHECK(v.contains("dtype") && v["dtype"].is_string(), tw, "missing string 'dtype'");
    MT_INPUT_CHECK(v.contains("shape") && v["shape"].is_array(), tw, "missing array 'shape'");
    MT_INPUT_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2,
                   tw, "missing 'data_offsets' [begin, end]");
    TensorEntry t;
    t.name = name;
    t.dtype = v["dtype"].get<std::string>();
    const int bits = dtype_bits(t.dtype);
    MT_INPUT_CHECK(bits > 0, tw, "unknown dtype '", brief_text(t.dtype), "'");
    // numel with overflow guard: every product stays below 2^62
    unsigned __int128 numel = 1;
    for (const json& d : v["shape"]) {
      MT_INPUT_CHECK(d.is_number_unsigned() && d.get<uint64_t>() < (uint64_t(1) << 62), tw, "shape ",
                     json_brief(v["shape"]), " has a non-integer, negative or huge dim");
      numel *= d.get<uint64_t>();
      MT_INPUT_CHECK(numel < (unsigned __int128)1 << 62, tw, "shape ", json_brief(v["shape"]), " is too large");
      t.shape.push_back(d.get<i64>());
    }
    for (const json& o : v["data_offsets"])
      MT_INPUT_CHECK(o.is_number_unsigned(), tw, "data_offsets ", json_brief(v["data_offsets"]),
                     " must be non-negative integers");
    const uint64_t b = v["data_offsets"][0].get<uint64_t>(), e = v["data_offsets"][1].get<uint64_t>();
    MT_INPUT_CHECK(b <= e, tw, "data_offsets [", b, ", ", e, "] end before begin");
    const unsigned __int128 total_bits = numel * unsigned(bits);
    MT_INPUT_CHECK(total_bits % 8 == 0, tw, "dtype ", t.dtype, " with shape ", brief_text(shape_str(t.shape)),
                   " is not a whole number of bytes");
    const uint64_t want = uint64_t(total_bits / 8);
    MT_INPUT_CHECK(e - b == want, tw, "data_offsets [", b, ", ", e, "] hold ", e - b, " bytes, but ", t.dtype,
                   " ", brief_text(shape_str(t.shape)), " needs ", want);
    t.nbytes = size_t(want);
    spans.push_back({b, e, f.tensors_.size()});
    f.tensors_.push_back(std::move(t));
  }

  // The tensors must tile the data buffer exactly: file length = 8 + N + last end.
  uint64_t last_end = 0;
  for (const Span& s : spans) last_end = std::max(last_end, s.end);
  if (last_end > buf_size) {
    const bool wraps = last_end > std::numeric_limits<uint64_t>::max() - 8 - n;
    const std::string says =
        wraps ? "8 + " + std::to_string(n) + " + " + std::to_string(last_end) : std::to_string(8 + n + last_end);
    MT_INPUT_FAIL(where, "truncated: file has ", fsize, " bytes, header says ", says);
  }
  MT_INPUT_CHECK(last_end == buf_size, where, "corrupt: file has ", fsize, " bytes, header says ", 8 + n + last_end,
                 " (", buf_size - last_end, " trailing bytes not covered by any tensor)");
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const Span& s : spans) {
    const std::string nm = brief_text(f.tensors_[s.idx].name);
    MT_INPUT_CHECK(s.begin >= cursor, where, "corrupt header: tensor '", nm, "' data_offsets [", s.begin, ", ",
                   s.end, "] overlap the previous tensor (which ends at ", cursor, ")");
    MT_INPUT_CHECK(s.begin == cursor, where, "corrupt header: gap in the data buffer: bytes [", cursor, ", ",
                   s.begin, ") belong to no tensor (next is '", nm, "')");
    cursor = s.end;
  }
  for (const Span& s : spans) f.tensors_[s.idx].data = buf + s.begin;
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

// ---------------------------------------------------------------- writer

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    MT_CHECK(t.name != "__metadata__" && names.insert(t.name).second, "duplicate tensor name ", t.name);
    order.push_back(&t);
  }
  auto esize = [](const TensorToWrite* t) { return t->out_dtype == StDtype::F32 ? 4 : 2; };
  auto numel = [](const TensorToWrite* t) {
    i64 n = 1;
    for (i64 d : t->shape) {
      MT_CHECK(d >= 0, t->name);
      n *= d;
    }
    return n;
  };
  // Reference order: dtype size descending, then name — keeps every tensor naturally aligned.
  std::sort(order.begin(), order.end(), [&](const TensorToWrite* a, const TensorToWrite* b) {
    return esize(a) != esize(b) ? esize(a) > esize(b) : a->name < b->name;
  });

  json h = json::object();
  json meta = json::object();
  meta["format"] = "pt";
  for (const auto& [k, v] : metadata) meta[k] = v;
  h["__metadata__"] = meta;
  uint64_t off = 0;
  for (const TensorToWrite* t : order) {
    const uint64_t nb = uint64_t(numel(t)) * esize(t);
    MT_CHECK(nb == 0 || t->data != nullptr, "no data for tensor ", t->name);
    h[t->name] = {{"dtype", t->out_dtype == StDtype::F32 ? "F32" : "BF16"},
                  {"shape", t->shape},
                  {"data_offsets", {off, off + nb}}};
    off += nb;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  std::FILE* fp = std::fopen(tmp.c_str(), "wb");
  MT_INPUT_CHECK(fp != nullptr, "cannot write ", tmp, ": ", std::strerror(errno));
  bool ok = true;
  auto put = [&](const void* p, size_t nb) {
    if (ok && nb && std::fwrite(p, 1, nb, fp) != nb) ok = false;
  };
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
  put(len, 8);
  put(header.data(), header.size());
  std::vector<uint16_t> chunk;
  for (const TensorToWrite* t : order) {
    const size_t n = size_t(numel(t));
    if (t->out_dtype == StDtype::F32) {
      put(t->data, n * 4);  // little-endian host (x86-64 / aarch64)
      continue;
    }
    const size_t kChunk = size_t(1) << 20;
    for (size_t i = 0; i < n; i += kChunk) {
      const size_t m = std::min(kChunk, n - i);
      chunk.resize(m);
      for (size_t j = 0; j < m; ++j) chunk[j] = f32_to_bf16(t->data[i + j]);
      put(chunk.data(), m * 2);
    }
  }
  if (ok) ok = std::fflush(fp) == 0 && fsync(fileno(fp)) == 0;
  const int saved = errno;
  if (std::fclose(fp) != 0) ok = false;
  if (!ok) {
    std::remove(tmp.c_str());
    MT_INPUT_FAIL("cannot write ", tmp, ": ", std::strerror(saved ? saved : EIO));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    MT_INPUT_FAIL("cannot rename ", tmp, " to ", path, ": ", std::strerror(e));
  }
}

}  // namespace moe
