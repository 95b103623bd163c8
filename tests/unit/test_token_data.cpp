// Owns the TokenData.* tests: memory-mapped sources, moe-prep build directories with loss masks, data.mix
// interleaving (ratios, random access, per-source epochs and shuffles) and the refusals of bad combinations.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <algorithm>
#include <functional>
#include <set>
#include <vector>

#include "core/error.h"
#include "data/token_data.h"
#include "test_util.h"

namespace moe {
namespace {
using test::TmpDir;

// A uint32 token file of ids base, base+1, ... (mod vocab).
std::string id_file(const TmpDir& t, const std::string& name, int n, uint32_t base, uint32_t vocab) {
  std::vector<uint32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[size_t(i)] = (base + uint32_t(i)) % vocab;
  const std::string p = t / name;
  std::FILE* f = std::fopen(p.c_str(), "wb");
  std::fwrite(v.data(), 4, v.size(), f);
  std::fclose(f);
  return p;
}

// A moe-prep build directory: tokens 0..n-1 (mod vocab), loss mask 1 on tokens whose index % 3 == 0.
std::string prep_dir(const TmpDir& t, int n, uint32_t vocab, const std::string& meta_override = "") {
  const std::string d = t / "prep";
  std::filesystem::create_directories(d);
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids[size_t(i)] = uint32_t(i) % vocab, mask[size_t(i)] = i % 3 == 0;
  std::ofstream(d + "/tokens.bin", std::ios::binary).write(reinterpret_cast<const char*>(ids.data()), n * 4);
  std::ofstream(d + "/loss_mask.bin", std::ios::binary).write(reinterpret_cast<const char*>(mask.data()), n);
  std::ofstream(d + "/meta.json") << (meta_override.empty()
                                          ? "{\"format_version\": 1, \"num_tokens\": " + std::to_string(n) + "}"
                                          : meta_override);
  return d;
}

DataConfig tokens_config() {
  DataConfig d;
  d.format = DataFormat::Tokens;
  d.dtype = TokenDtype::U32;
  return d;
}

TEST(TokenData, MixRatiosWithinOnePercentOver10kSamples) {
  TmpDir t;
  DataConfig d = tokens_config();
  d.mix = {{id_file(t, "a", 4001, 0, 1000), 5.0}, {id_file(t, "b", 801, 0, 1000), 3.0},
           {id_file(t, "c", 1601, 0, 1000), 2.0}};
  const TokenData data(d, 1000, 8, 1, "data.path", 10000);
  std::vector<i64> count(3, 0);
  for (i64 i = 0; i < 10000; ++i) {
    const auto [s, k] = data.locate(i);
    ASSERT_EQ(k, count[size_t(s)]) << "sample " << i << ": index within source " << s;  // random access = running
    ++count[size_t(s)];
  }
  const double want[3] = {0.5, 0.3, 0.2};
  for (int s = 0; s < 3; ++s) EXPECT_NEAR(double(count[size_t(s)]) / 10000.0, want[s], 0.01) << "source " << s;
  // Beyond the planned samples (resume past steps, eval): still the running count, no allocation needed.
  for (i64 i = 10000; i < 13000; ++i) {
    const auto [s, k] = data.locate(i);
    ASSERT_EQ(k, count[size_t(s)]) << "sample " << i;
    ++count[size_t(s)];
  }
}

TEST(TokenData, MixWindowsCycleEachSourceThroughItsEpochs) {
  TmpDir t;
  DataConfig d = tokens_config();
  // Source a: ids 0.. (5 windows of 8 + 1), source b: ids 500.. (3 windows).
  d.mix = {{id_file(t, "a", 41, 0, 1000), 1.0}, {id_file(t, "b", 25, 500, 1000), 1.0}};
  for (const bool shuffle : {false, true}) {
    d.shuffle = shuffle;
    const TokenData data(d, 1000, 8, 3, "data.path", 64);
    std::vector<std::vector<i64>> seen(2);
    std::vector<int32_t> in(8), tg(8);
    for (i64 i = 0; i < 64; ++i) {
      const auto [s, k] = data.locate(i);
      EXPECT_EQ(data.window(i, in.data(), tg.data()), 8);
      const i64 w = (in[0] - (s == 0 ? 0 : 500)) / 8;
      ASSERT_EQ(in[0], (s == 0 ? 0 : 500) + 8 * w) << "window start";
      ASSERT_EQ(tg[7], in[7] + 1);
      if (!shuffle) EXPECT_EQ(w, k % (s == 0 ? 5 : 3));
      seen[size_t(s)].push_back(w);
    }
    // Every epoch of a source is a permutation of its windows.
    for (int s = 0; s < 2; ++s) {
      const size_t n = s == 0 ? 5 : 3;
      for (size_t e = 0; (e + 1) * n <= seen[size_t(s)].size(); ++e) {
        std::set<i64> ep(seen[size_t(s)].begin() + long(e * n), seen[size_t(s)].begin() + long((e + 1) * n));
        EXPECT_EQ(ep.size(), n) << "source " << s << " epoch " << e << (shuffle ? " (shuffled)" : "");
      }
    }
  }
}

TEST(TokenData, PreparedDirectoryMasksTargets) {
  TmpDir t;
  DataConfig d = tokens_config();
  d.path = prep_dir(t, 100, 64);
  std::vector<int32_t> in(8), tg(8);
  for (const bool mask : {false, true}) {
    d.mask_prompt = mask;
    const TokenData data(d, 64, 8, 1);
    EXPECT_EQ(data.num_tokens(), 100);
    EXPECT_EQ(data.masks_targets(), mask);
    for (i64 i = 0; i < 12; ++i) {
      const i64 counted = data.window(i, in.data(), tg.data());
      EXPECT_EQ(counted, data.count_targets(i));
      i64 want = 0;
      for (int j = 0; j < 8; ++j) {
        const i64 pos = (i % 12) * 8 + j + 1;  // the target's token index
        EXPECT_EQ(in[size_t(j)], int32_t((pos - 1) % 64));
        const bool counts = !mask || pos % 3 == 0;
        EXPECT_EQ(tg[size_t(j)], counts ? int32_t(pos % 64) : kMaskedTarget) << "window " << i << " target " << j;
        want += counts;
      }
      EXPECT_EQ(counted, want);
    }
  }
}

// data.reset_attention: each input's document start in the window (clamped to 0), and the target of a document's
// last token (the next document's first token) masked; counted targets agree with count_targets.
TEST(TokenData, PackedDocumentStartsAndBoundaryTargets) {
  TmpDir t;
  DataConfig d = tokens_config();
  d.path = prep_dir(t, 100, 64);
  const std::vector<uint64_t> docs = {0, 5, 12, 13, 40, 100};
  std::ofstream(d.path + "/docs.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(docs.data()), std::streamsize(docs.size() * 8));
  d.reset_attention = true;
  const TokenData data(d, 64, 8, 1);
  EXPECT_TRUE(data.packed_documents());
  std::vector<int32_t> in(8), tg(8), ds(8);
  for (i64 w = 0; w < 12; ++w) {
    const i64 counted = data.window(w, in.data(), tg.data(), ds.data());
    EXPECT_EQ(counted, data.count_targets(w));
    i64 want = 0;
    for (int j = 0; j < 8; ++j) {
      const i64 pos = w * 8 + j;
      i64 start = 0;
      for (uint64_t s : docs)
        if (s <= uint64_t(pos)) start = i64(s);
      EXPECT_EQ(ds[size_t(j)], int32_t(std::max<i64>(start - w * 8, 0))) << "window " << w << " position " << j;
      const bool boundary = std::find(docs.begin(), docs.end(), uint64_t(pos + 1)) != docs.end();
      EXPECT_EQ(tg[size_t(j)], boundary ? kMaskedTarget : int32_t((pos + 1) % 64)) << "window " << w << " target " << j;
      want += !boundary;
    }
    EXPECT_EQ(counted, want);
  }
}

void expect_bad(const std::function<void()>& f, const std::string& phrase) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming '" << phrase << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput) << e.what();
    EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
  }
}

TEST(TokenData, RefusesBadCombinationsAndDirectories) {
  TmpDir t;
  DataConfig d = tokens_config();
  d.path = id_file(t, "plain", 100, 0, 64);
  d.mask_prompt = true;
  expect_bad([&] { TokenData x(d, 64, 8, 1); }, "data.mask_prompt: true needs loss masks");
  expect_bad([&] { check_data_sources(d, 64, 8, DataScan::Size); }, "data.mask_prompt: true needs loss masks");
  d.mask_prompt = false;
  d.mix = {{d.path, 1.0}};
  expect_bad([&] { check_data_sources(d, 64, 8, DataScan::Size); }, "data.path and data.mix are both set");
  d.mix.clear();
  d.path = prep_dir(t, 100, 64, "{\"format_version\": 2, \"num_tokens\": 100}");
  expect_bad([&] { TokenData x(d, 64, 8, 1); }, "format_version 2 is not supported");
  d.path = prep_dir(t, 100, 64, "{\"format_version\": 1, \"num_tokens\": 99}");
  expect_bad([&] { TokenData x(d, 64, 8, 1); }, "but meta.json says 99");
  d.path = prep_dir(t, 100, 64, "not json");
  expect_bad([&] { TokenData x(d, 64, 8, 1); }, "is not valid JSON");
  d.path = t.str();  // a directory without meta.json
  expect_bad([&] { TokenData x(d, 64, 8, 1); }, "without meta.json");
  d.path = prep_dir(t, 100, 64);
  expect_bad([&] { TokenData x(d, 50, 8, 1); }, "is >= model.vocab_size 50");
  const uint64_t bad_docs[2] = {0, 50};  // does not end at num_tokens (100)
  std::ofstream(d.path + "/docs.bin", std::ios::binary).write(reinterpret_cast<const char*>(bad_docs), 16);
  expect_bad([&] { TokenData x(d, 64, 8, 1); }, "docs.bin': must hold uint64 document starts");
  std::filesystem::remove(d.path + "/docs.bin");
  d.reset_attention = true;
  expect_bad([&] { TokenData x(d, 64, 8, 1); }, "data.reset_attention: true needs document boundaries");
  d.reset_attention = false;
  d.format = DataFormat::Text;
  expect_bad([&] { TokenData x(d, 300, 8, 1); }, "data.format must be tokens");
}

}  // namespace
}  // namespace moe
