// Owns read_bench_csv: moe-bench's CSV (one row per configuration, columns by name) → CostSample, with BadInput naming path:line.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "bench/cost_model.h"
#include "core/error.h"

namespace moe {
namespace {

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    std::string f = line.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const size_t b = f.find_first_not_of(" \t");
    const size_t e = f.find_last_not_of(" \t");
    out.push_back(b == std::string::npos ? std::string() : f.substr(b, e - b + 1));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// The columns moe-bench writes, in its order (extra columns are allowed and ignored).
std::vector<std::string> required_columns() {
  std::vector<std::string> c = {"ep", "tokens", "hidden", "ffn", "experts", "topk", "capacity_factor", "repeats"};
  for (const char* p : kMoePhaseName) {
    c.push_back(std::string(p) + "_ms");
    c.push_back(std::string(p) + "_p10_ms");
    c.push_back(std::string(p) + "_p90_ms");
  }
  for (const char* n : {"fwd_ms", "bwd_ms", "layer_ms", "overhead_pct", "a2a_send_bytes_max", "a2a_recv_bytes_max",
                        "rows_max", "held_out"})
    c.push_back(n);
  return c;
}

struct RowReader {
  const std::string& path;
  int line;
  const std::vector<std::string>& fields;
  const std::map<std::string, size_t>& col;

  double num(const std::string& name) const {
    const std::string& f = fields[col.at(name)];
    errno = 0;
    char* end = nullptr;
    const double v = std::strtod(f.c_str(), &end);
    if (f.empty() || end != f.c_str() + f.size() || errno == ERANGE || !std::isfinite(v))
      MT_INPUT_FAIL(path, ":", line, ": column ", name, ": got '", f, "', allowed: a finite number");
    return v;
  }
  double nonneg(const std::string& name) const {
    const double v = num(name);
    if (v < 0) MT_INPUT_FAIL(path, ":", line, ": column ", name, ": got ", f_(name), ", allowed: >= 0");
    return v;
  }
  i64 positive_int(const std::string& name) const {
    const double v = num(name);
    if (v < 1 || v != std::floor(v) || v > 9e15)
      MT_INPUT_FAIL(path, ":", line, ": column ", name, ": got ", f_(name), ", allowed: an integer >= 1");
    return i64(v);
  }
  const std::string& f_(const std::string& name) const { return fields[col.at(name)]; }
};

}  // namespace

std::vector<CostSample> read_bench_csv(const std::string& path) {
  std::ifstream in(path);
  MT_INPUT_CHECK(in.good(), path, ": cannot open the moe-bench CSV (moe-bench --out DIR writes DIR/moe_bench.csv)");
  std::string text;
  int line = 0;
  std::map<std::string, size_t> col;
  size_t ncols = 0;
  std::vector<CostSample> out;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    const std::vector<std::string> fields = split_fields(text);
    if (col.empty()) {  // the header
      for (size_t i = 0; i < fields.size(); ++i) {
        MT_INPUT_CHECK(!fields[i].empty(), path, ":", line, ": header column ", i + 1, " is empty");
        MT_INPUT_CHECK(col.emplace(fields[i], i).second, path, ":", line, ": header repeats column ", fields[i]);
      }
      for (const std::string& c : required_columns())
        MT_INPUT_CHECK(col.count(c), path, ":", line, ": header has no column ", c,
                       " (moe-bench's CSV: ep,tokens,hidden,...,held_out; see bench/README_moe_bench.md)");
      ncols = fields.size();
      continue;
    }
    MT_INPUT_CHECK(fields.size() == ncols, path, ":", line, ": ", fields.size(), " fields, the header has ", ncols);
    const RowReader r{path, line, fields, col};
    CostSample s;
    s.line = line;
    s.ep = int(r.positive_int("ep"));
    s.tokens = r.positive_int("tokens");
    s.hidden = r.positive_int("hidden");
    s.ffn = r.positive_int("ffn");
    s.experts = r.positive_int("experts");
    s.topk = r.positive_int("topk");
    s.capacity_factor = r.nonneg("capacity_factor");
    s.repeats = int(r.positive_int("repeats"));
    for (int p = 0; p < kMoePhases; ++p) {
      const std::string stem = kMoePhaseName[p];
      s.ms[size_t(p)] = r.nonneg(stem + "_ms");
      s.p10_ms[size_t(p)] = r.nonneg(stem + "_p10_ms");
      s.p90_ms[size_t(p)] = r.nonneg(stem + "_p90_ms");
    }
    s.fwd_ms = r.nonneg("fwd_ms");
    s.bwd_ms = r.nonneg("bwd_ms");
    s.layer_ms = r.nonneg("layer_ms");
    MT_INPUT_CHECK(s.layer_ms > 0, path, ":", line, ": column layer_ms: got ", r.f_("layer_ms"), ", allowed: > 0");
    s.overhead_pct = r.num("overhead_pct");
    s.a2a_send_bytes_max = r.nonneg("a2a_send_bytes_max");
    s.a2a_recv_bytes_max = r.nonneg("a2a_recv_bytes_max");
    s.rows_max = r.nonneg("rows_max");
    const double held = r.num("held_out");
    MT_INPUT_CHECK(held == 0 || held == 1, path, ":", line, ": column held_out: got ", r.f_("held_out"),
                   ", allowed: 0 or 1");
    s.held_out = held == 1;
    MT_INPUT_CHECK(s.experts % s.ep == 0, path, ":", line, ": experts ", s.experts, " do not divide by ep ", s.ep);
    out.push_back(s);
  }
  MT_INPUT_CHECK(!col.empty(), path, ": empty file (expected moe-bench's CSV header and rows)");
  MT_INPUT_CHECK(!out.empty(), path, ": no data rows after the header");
  return out;
}

}  // namespace moe
