// Tests src/io/tensorboard: CRC-32C and the masked CRC against published vectors, TFRecord framing parsed back by
// hand, each record decoded with the generated protos, and the writer's errors.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <cstdint>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/tensorboard/event_writer.h"
#include "io/tensorboard/record_framing.h"
#include "io/tensorboard/tb_event.pb.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace moe;
using moe::test::bad_input;
using moe::test::expect_bad_input;
using moe::test::TmpDir;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

uint64_t le(const std::string& s, size_t pos, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(static_cast<unsigned char>(s[pos + i])) << (8 * i);
  return v;
}

// The records of an event file, parsed here without split_records: each length and both masked CRCs checked.
std::vector<std::string> parse_by_hand(const std::string& bytes) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    EXPECT_GE(bytes.size() - pos, 16u) << "short record at " << pos;
    if (bytes.size() - pos < 16) break;
    const uint64_t n = le(bytes, pos, 8);
    EXPECT_EQ(le(bytes, pos + 8, 4), tb::masked_crc32c(tb::crc32c(bytes.data() + pos, 8))) << "length CRC at " << pos;
    EXPECT_LE(pos + 16 + n, bytes.size()) << "record at " << pos << " overruns the file";
    if (pos + 16 + n > bytes.size()) break;
    const std::string data = bytes.substr(pos + 12, n);
    EXPECT_EQ(le(bytes, pos + 12 + n, 4), tb::masked_crc32c(tb::crc32c(data.data(), data.size())))
        << "data CRC at " << pos;
    out.push_back(data);
    pos += 16 + n;
  }
  return out;
}

tb::proto::Event decode(const std::string& record) {
  tb::proto::Event event;
  EXPECT_TRUE(event.ParseFromString(record));
  return event;
}

std::vector<double> as_vector(const google::protobuf::RepeatedField<double>& r) { return {r.begin(), r.end()}; }

}  // namespace

// RFC 3720 (iSCSI) §B.4 vectors and the usual "123456789" check value of CRC-32C.
TEST(TbFraming, Crc32cKnownVectors) {
  EXPECT_EQ(tb::crc32c("123456789", 9), 0xE3069283u);
  const std::vector<unsigned char> zeros(32, 0x00), ones(32, 0xFF);
  std::vector<unsigned char> ascending(32);
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(tb::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(tb::crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(tb::crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(tb::crc32c("", 0), 0x00000000u);
}

// mask(c) = ror(c, 15) + 0xa282ead8: for c = 0xE3069283, ror15 = 0x0001C60D | 0x25060000 = 0x2507C60D, and
// 0x2507C60D + 0xA282EAD8 = 0xC78AB0E5. The sum wraps for c = 0xFFFFFFFF: 0xFFFFFFFF + 0xA282EAD8 = 0xA282EAD7.
TEST(TbFraming, MaskedCrcKnownValues) {
  EXPECT_EQ(tb::masked_crc32c(0xE3069283u), 0xC78AB0E5u);
  EXPECT_EQ(tb::masked_crc32c(0xFFFFFFFFu), 0xA282EAD7u);
  EXPECT_EQ(tb::masked_crc32c(0u), 0xA282EAD8u);
}

TEST(TbFraming, AppendAndSplitRoundTrip) {
  std::string file;
  const std::vector<std::string> payloads = {"", "a", std::string(1000, '\x7f'), std::string("\0\1\2", 3)};
  for (const auto& p : payloads) tb::append_record(file, p);
  size_t expected_size = 0;
  for (const auto& p : payloads) expected_size += 16 + p.size();
  ASSERT_EQ(file.size(), expected_size);
  EXPECT_EQ(parse_by_hand(file), payloads);
  EXPECT_EQ(tb::split_records(file, "mem"), payloads);
}

TEST(TbFraming, SplitRejectsCorruptionAndTruncation) {
  std::string file;
  tb::append_record(file, "first");
  tb::append_record(file, "second record");
  std::string data_flip = file;
  data_flip[21 + 16 + 2] ^= 0x01;  // a byte of the second record's data (the first one spans 16 + 5 bytes)
  expect_bad_input([&] { tb::split_records(data_flip, "ev.bin"); }, {"ev.bin", "record 1", "byte 21", "data CRC"});
  std::string length_flip = file;
  length_flip[0] ^= 0x01;
  expect_bad_input([&] { tb::split_records(length_flip, "ev.bin"); }, {"record 0", "length CRC"});
  expect_bad_input([&] { tb::split_records(file.substr(0, file.size() - 1), "ev.bin"); }, {"record 1", "truncated"});
  expect_bad_input([&] { tb::split_records(file.substr(0, 21 + 5), "ev.bin"); }, {"record 1", "truncated"});
}

TEST(TbEventWriter, RecordsDecodeWithTheGeneratedProtos) {
  TmpDir tmp;
  const std::string dir = tmp / "a/b/tb";  // created like mkdir -p
  std::string path;
  {
    tb::TbEventWriter w(dir);
    path = w.path();
    w.scalar("train/loss", 7, 0.1);
    w.histogram("h", 8, {0.0, 1.0, 4.0}, {2.0, 0.0, 3.0}, -1.0, 3.5, 5.0, 6.25, 20.5);
    w.expert_load_histogram("router/layer1/expert_load", 9, {3, 0, 5});
    w.session_start(4);
    w.flush();
  }
  // events.out.tfevents.<unix seconds>.<hostname>.<pid>
  const std::string name = fs::path(path).filename().string();
  EXPECT_EQ(fs::path(path).parent_path(), fs::path(dir));
  ASSERT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  EXPECT_EQ(name.substr(name.size() - std::to_string(getpid()).size() - 1), "." + std::to_string(getpid())) << name;
  const long long secs = std::stoll(name.substr(std::strlen("events.out.tfevents.")));
  const long long now = static_cast<long long>(time(nullptr));
  EXPECT_LE(secs, now);
  EXPECT_GT(secs, now - 600);

  const std::string bytes = read_bytes(path);
  const std::vector<std::string> records = parse_by_hand(bytes);
  ASSERT_EQ(records.size(), 5u);
  EXPECT_EQ(tb::split_records(bytes, path), records);

  const tb::proto::Event version = decode(records[0]);
  EXPECT_EQ(version.what_case(), tb::proto::Event::kFileVersion);
  EXPECT_EQ(version.file_version(), "brain.Event:2");
  EXPECT_GT(version.wall_time(), 1.6e9);  // seconds since the epoch, not ms or ns

  const tb::proto::Event scalar = decode(records[1]);
  EXPECT_EQ(scalar.step(), 7);
  ASSERT_EQ(scalar.summary().value_size(), 1);
  EXPECT_EQ(scalar.summary().value(0).tag(), "train/loss");
  ASSERT_TRUE(scalar.summary().value(0).value_case() == tb::proto::Summary::Value::kSimpleValue);
  EXPECT_EQ(scalar.summary().value(0).simple_value(), 0.1f);
  EXPECT_GE(scalar.wall_time(), version.wall_time());

  const tb::proto::Event hist = decode(records[2]);
  EXPECT_EQ(hist.step(), 8);
  ASSERT_EQ(hist.summary().value_size(), 1);
  EXPECT_EQ(hist.summary().value(0).tag(), "h");
  const tb::proto::HistogramProto& h = hist.summary().value(0).histo();
  EXPECT_EQ(h.min(), -1.0);
  EXPECT_EQ(h.max(), 3.5);
  EXPECT_EQ(h.num(), 5.0);
  EXPECT_EQ(h.sum(), 6.25);
  EXPECT_EQ(h.sum_squares(), 20.5);
  EXPECT_EQ(as_vector(h.bucket_limit()), (std::vector<double>{0.0, 1.0, 4.0}));
  EXPECT_EQ(as_vector(h.bucket()), (std::vector<double>{2.0, 0.0, 3.0}));

  // load {3, 0, 5} over x = expert index 0, 1, 2: num = 8, sum = 0·3 + 1·0 + 2·5 = 10, sum_sq = 4·5 = 20.
  const tb::proto::Event load = decode(records[3]);
  EXPECT_EQ(load.step(), 9);
  EXPECT_EQ(load.summary().value(0).tag(), "router/layer1/expert_load");
  const tb::proto::HistogramProto& l = load.summary().value(0).histo();
  EXPECT_EQ(as_vector(l.bucket_limit()), (std::vector<double>{0.5, 1.5, 2.5}));
  EXPECT_EQ(as_vector(l.bucket()), (std::vector<double>{3.0, 0.0, 5.0}));
  EXPECT_EQ(l.min(), -0.5);
  EXPECT_EQ(l.max(), 2.5);
  EXPECT_EQ(l.num(), 8.0);
  EXPECT_EQ(l.sum(), 10.0);
  EXPECT_EQ(l.sum_squares(), 20.0);

  const tb::proto::Event start = decode(records[4]);
  EXPECT_EQ(start.step(), 4);
  ASSERT_EQ(start.what_case(), tb::proto::Event::kSessionLog);
  EXPECT_EQ(start.session_log().status(), tb::proto::SessionLog::START);
}

// min/max are the outer edges of the first and last loaded expert (TensorBoard draws its remaining buckets between
// them); with no load at all they span every expert.
TEST(TbEventWriter, ExpertLoadRangeSkipsEmptyEnds) {
  TmpDir tmp;
  std::string path;
  {
    tb::TbEventWriter w(tmp.str());
    path = w.path();
    w.expert_load_histogram("l", 1, {0, 4, 0, 2, 0});
    w.expert_load_histogram("l", 2, {0, 0, 0});
  }
  const std::vector<std::string> records = parse_by_hand(read_bytes(path));
  ASSERT_EQ(records.size(), 3u);
  const tb::proto::HistogramProto inner = decode(records[1]).summary().value(0).histo();
  EXPECT_EQ(inner.min(), 0.5);
  EXPECT_EQ(inner.max(), 3.5);
  EXPECT_EQ(inner.num(), 6.0);
  EXPECT_EQ(inner.sum(), 1.0 * 4 + 3.0 * 2);
  EXPECT_EQ(inner.sum_squares(), 1.0 * 4 + 9.0 * 2);
  EXPECT_EQ(as_vector(inner.bucket_limit()), (std::vector<double>{0.5, 1.5, 2.5, 3.5, 4.5}));
  const tb::proto::HistogramProto empty = decode(records[2]).summary().value(0).histo();
  EXPECT_EQ(empty.min(), -0.5);
  EXPECT_EQ(empty.max(), 2.5);
  EXPECT_EQ(empty.num(), 0.0);
}

// Two writers on one directory within the same second never share (or truncate) a file.
TEST(TbEventWriter, TwoWritersGetTwoFiles) {
  TmpDir tmp;
  tb::TbEventWriter a(tmp.str());
  tb::TbEventWriter b(tmp.str());
  EXPECT_NE(a.path(), b.path());
  a.scalar("x", 1, 1.0);
  b.scalar("x", 1, 2.0);
  a.flush();
  b.flush();
  EXPECT_EQ(tb::split_records(read_bytes(a.path()), a.path()).size(), 2u);
  EXPECT_EQ(tb::split_records(read_bytes(b.path()), b.path()).size(), 2u);
}

TEST(TbEventWriter, DirectoryUnderARegularFileIsBadInput) {
  TmpDir tmp;
  const std::string file = tmp / "plain";
  std::ofstream(file) << "not a directory";
  const std::string dir = file + "/tb";
  expect_bad_input([&] { tb::TbEventWriter w(dir); }, {"log.tensorboard", "cannot create directory", dir});
  expect_bad_input([&] { tb::TbEventWriter w(file); }, {"log.tensorboard", file});
}

// A write the file system refuses (here: over RLIMIT_FSIZE, which fails with EFBIG once SIGXFSZ is ignored) throws
// BadInput naming the file, at the latest in flush(), instead of leaving a silently short event file.
TEST(TbEventWriter, WriteErrorNamesTheFile) {
  TmpDir tmp;
  tb::TbEventWriter w(tmp.str());
  const std::string path = w.path();
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  void (*old_handler)(int) = std::signal(SIGXFSZ, SIG_IGN);
  const std::string msg = bad_input([&] {
    for (int step = 0; step < 10000; ++step) w.scalar("train/loss", step, 1.0);
    w.flush();
  });
  std::signal(SIGXFSZ, old_handler);
  setrlimit(RLIMIT_FSIZE, &old);
  EXPECT_NE(msg.find("cannot write event file " + path), std::string::npos) << msg;
}
