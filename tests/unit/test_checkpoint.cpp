// Owns the single-process checkpoint tests: bitwise resume, latest/keep, corrupt and truncated files (DESIGN §7).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "config/config.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "test_util.h"
#include "train/trainer.h"

using namespace moe;
namespace fs = std::filesystem;
using moe::test::TmpDir;

namespace {

std::string config_text(const fs::path& dir) {
  const std::string data = moe::test::random_token_file(dir);
  return "run: {dir: " + (dir / "run").string() + "}\n"
         "model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2,\n"
         "        num_heads: 4, num_kv_heads: 2, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "moe: {capacity_factor: 1.25, aux_loss_coef: 0.05, z_loss_coef: 0.01, router_jitter: 0.05,\n"
         "      expert_dropout: 0.1, bias_update_rate: 0.01}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 6, lr: 0.01, warmup_steps: 2, weight_decay: 0.1}\n"
         "checkpoint: {keep: 2}\n"
         "log: {every: 100}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

std::vector<double> run_steps(Trainer& tr, int from, int to) {
  std::vector<double> losses;
  for (int s = from; s < to; ++s) losses.push_back(tr.step(s).loss);
  return losses;
}

}  // namespace

TEST(Checkpoint, BitwiseResumeSameLayout) {
  TmpDir d;
  auto self = make_self_communicator();
  const std::string yaml = config_text(d.path());
  Trainer straight(parse_config(yaml, {}, "t"), *self);
  const auto all = run_steps(straight, 0, 6);

  Trainer first(parse_config(yaml, {"train.steps=3"}, "t"), *self);
  first.run();  // writes step_3.h5 at the end
  ASSERT_TRUE(fs::exists(d.path() / "run/checkpoints/step_3.h5"));
  Trainer second(parse_config(yaml, {}, "t"), *self);
  second.resume("auto");
  ASSERT_EQ(second.start_step(), 3);
  const auto tail = run_steps(second, 3, 6);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(tail[i], all[3 + i]) << "loss of step " << 4 + i << " not bitwise equal";
  EXPECT_EQ(second.params(), straight.params());  // bitwise
}

TEST(Checkpoint, LatestKeepAndAtomicNames) {
  TmpDir d;
  auto self = make_self_communicator();
  Trainer tr(parse_config(config_text(d.path()), {"checkpoint.every=1"}, "t"), *self);
  tr.run();
  const fs::path ck = d.path() / "run/checkpoints";
  std::ifstream l(ck / "latest");
  std::string name;
  l >> name;
  EXPECT_EQ(name, "step_6.h5");
  EXPECT_TRUE(fs::exists(ck / "step_6.h5"));
  EXPECT_TRUE(fs::exists(ck / "step_5.h5"));
  EXPECT_FALSE(fs::exists(ck / "step_4.h5"));  // keep: 2
  for (const auto& e : fs::directory_iterator(ck)) EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos);
  const CheckpointMeta m = read_checkpoint_meta((ck / "step_6.h5").string());
  EXPECT_EQ(m.step, 6);
  EXPECT_EQ(m.tokens_seen, 6 * 4 * 8);
  EXPECT_EQ(m.select_bias.size(), 2u);
}

// Flips one byte inside the largest dataset's data (fletcher32 catches it) or truncates the file.
static void damage(const fs::path& f, bool truncate) {
  const auto size = fs::file_size(f);
  if (truncate) {
    fs::resize_file(f, size / 2);
    return;
  }
  std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
  // Data chunks sit after the metadata; flip bytes spread over the back half of the file.
  for (int k = 1; k <= 8; ++k) {
    io.seekg(std::streamoff(size / 2 + k * (size / 20)));
    char c;
    io.read(&c, 1);
    c ^= 0x5a;
    io.seekp(std::streamoff(size / 2 + k * (size / 20)));
    io.write(&c, 1);
  }
}

TEST(Checkpoint, CorruptOrTruncatedIsRejected) {
  for (bool truncate : {false, true}) {
    TmpDir d;
    auto self = make_self_communicator();
    const std::string yaml = config_text(d.path());
    Trainer tr(parse_config(yaml, {"checkpoint.every=3"}, "t"), *self);
    tr.run();  // step_3.h5 and step_6.h5
    const fs::path ck = d.path() / "run/checkpoints";
    damage(ck / "step_6.h5", truncate);
    EXPECT_NE(verify_checkpoint((ck / "step_6.h5").string()), "");
    EXPECT_EQ(verify_checkpoint((ck / "step_3.h5").string()), "");
    // Named explicitly: exit-2 error naming the file.
    Trainer b(parse_config(yaml, {}, "t"), *self);
    try {
      b.resume((ck / "step_6.h5").string());
      FAIL() << "a damaged checkpoint was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_NE(std::string(e.what()).find("step_6.h5"), std::string::npos) << e.what();
    }
    // auto: skips it and takes the newest good one.
    Trainer c(parse_config(yaml, {}, "t"), *self);
    c.resume("auto");
    EXPECT_EQ(c.start_step(), 3);
  }
}

TEST(Checkpoint, ModelShapeChangeRefused) {
  TmpDir d;
  auto self = make_self_communicator();
  const std::string yaml = config_text(d.path());
  Trainer tr(parse_config(yaml, {"train.steps=2"}, "t"), *self);
  tr.run();
  Trainer other(parse_config(yaml, {"model.hidden_size=48"}, "t"), *self);
  try {
    other.resume("auto");
    FAIL() << "resume with another model shape was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(std::string(e.what()).find("model.hidden_size"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, AutoWithoutCheckpointStartsFresh) {
  TmpDir d;
  auto self = make_self_communicator();
  Trainer tr(parse_config(config_text(d.path()), {}, "t"), *self);
  tr.resume("auto");
  EXPECT_EQ(tr.start_step(), 0);
}

// Format 2 added the /meta checksum; a format-1 file (written by the build before it) is still read and verified.
TEST(Checkpoint, FormatOneStillReads) {
  const std::string v1 = std::string(MOE_SOURCE_DIR) + "/tests/fuzz/corpus/checkpoint/tiny_v1_step1.h5";
  const CheckpointMeta m = read_checkpoint_meta(v1);
  EXPECT_EQ(m.format_version, 1);
  EXPECT_EQ(m.step, 1);
  EXPECT_EQ(verify_checkpoint(v1), "");
  const std::string v2 = std::string(MOE_SOURCE_DIR) + "/tests/fuzz/corpus/checkpoint/tiny_v2_step2.h5";
  EXPECT_EQ(read_checkpoint_meta(v2).format_version, 2);
  EXPECT_EQ(verify_checkpoint(v2), "");
}
