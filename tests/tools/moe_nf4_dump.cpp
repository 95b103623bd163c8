// Owns the NF4 test tool: fp32 values from a raw file → our NF4 codes, stats and dequantized values as raw files.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "peft/nf4.h"

using namespace moe;

namespace {
template <typename T>
void write_raw(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  MT_INPUT_CHECK(f.good(), "cannot write ", path);
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe-nf4-dump: quantize raw little-endian fp32 values to NF4 (block 64) and dump the parts"};
  std::string in, out;
  bool dq = false;
  app.add_option("--in", in, "raw fp32 input file")->required();
  app.add_option("--out", out, "output prefix: <out>codes.u8, absmax.f32 | qabsmax.u8 absmax2.f32 offset.f32, "
                               "deq.f32, map.f32 (the 8-bit dynamic map)")->required();
  app.add_flag("--double-quant", dq, "quantize the absmax (8-bit, block 256)");
  CLI11_PARSE(app, argc, argv);
  try {
    std::ifstream f(in, std::ios::binary);
    MT_INPUT_CHECK(f.good(), "cannot read ", in);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    MT_INPUT_CHECK(!bytes.empty() && bytes.size() % 4 == 0, in, ": size ", bytes.size(), " is not a positive multiple of 4");
    std::vector<float> x(bytes.size() / 4);
    std::memcpy(x.data(), bytes.data(), bytes.size());
    const Nf4Tensor q = nf4_quantize(x.data(), static_cast<int64_t>(x.size()),
                                     dq ? Nf4DoubleQuant::on : Nf4DoubleQuant::off);
    std::vector<float> deq(x.size());
    nf4_dequantize(q, deq.data());
    write_raw(out + "codes.u8", q.codes);
    if (dq) {
      write_raw(out + "qabsmax.u8", q.qabsmax);
      write_raw(out + "absmax2.f32", q.absmax2);
      write_raw(out + "offset.f32", std::vector<float>{q.offset});
    } else {
      write_raw(out + "absmax.f32", q.absmax);
    }
    write_raw(out + "deq.f32", deq);
    const auto& m = dynamic_map_signed();
    write_raw(out + "map.f32", std::vector<float>(m.begin(), m.end()));
    std::printf("n=%lld bytes=%lld bytes/param=%.6f\n", static_cast<long long>(q.n), static_cast<long long>(q.bytes()),
                static_cast<double>(q.bytes()) / static_cast<double>(q.n));
  } catch (const Error& e) {
    std::fprintf(stderr, "moe-nf4-dump: %s\n", e.what());
    return e.exit_code();
  }
  return 0;
}
