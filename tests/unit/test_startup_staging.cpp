// Owns the tests of start-up staging one parameter unit at a time: the memory plan's staging bytes and the
// seeded init (Trainer::init_params through ParamState::set_unit_params) against a whole-table Philox init.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "config/config.h"
#include "core/rng.h"
#include "model/param_table.h"
#include "test_util.h"
#include "train/memory_plan.h"
#include "train/trainer.h"

using namespace moe;
namespace fs = std::filesystem;
using moe::test::TmpDir;

namespace {

std::string config_text(const fs::path& dir) {
  const std::string data = moe::test::random_token_file(dir);
  return "run: {dir: " + (dir / "run").string() + "}\n"
         "model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 3,\n"
         "        num_heads: 4, num_kv_heads: 2, num_experts: 4, top_k: 2, init_std: 0.2}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 1, steps: 1, lr: 0.01, seed: 11}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

// The whole logical model drawn in one go: N(0, init_std) from Philox(seed, Init), stream FNV-1a of the HF
// name, sub-stream 0, element index = flat index in the tensor; norms are ones.
std::vector<float> whole_table_init(const ModelConfig& m, uint64_t seed) {
  const ParamTable t = build_param_table(m);
  std::vector<float> out(size_t(t.total_numel()), 0.f);
  const Philox ph(seed, RngPurpose::Init);
  for (const ParamInfo& p : t.entries())
    for (i64 i = 0; i < p.numel; ++i)
      out[size_t(p.offset + i)] = p.is_norm ? 1.f : float(m.init_std * ph.normal(uint64_t(i), name_stream(p.name), 0));
  return out;
}

}  // namespace

// The plan stages one unit (the largest of rank 0's padded table), not the whole local table.
TEST(StartupStaging, PlanStagesLargestUnit) {
  TmpDir d;
  for (int zero : {0, 3}) {
    for (int ep : {1, 2}) {
      const int world = 4;
      Config cfg = parse_config(config_text(d.path()), {"parallel.zero=" + std::to_string(zero),
                                                        "parallel.ep=" + std::to_string(ep)}, "t");
      const ModelConfig& m = cfg.model;
      const ExpertRange r = ep > 1 ? ExpertRange{0, m.num_experts / ep} : ExpertRange{};
      const ParamTable t = build_param_table(m, r, zero >= 1 ? world : 1, zero >= 1 ? world / ep : 1);
      i64 max_unit = 0, max_entry = 0;
      for (const ParamUnit& u : t.units()) max_unit = std::max(max_unit, u.size());
      for (const ParamInfo& e : t.entries()) max_entry = std::max(max_entry, e.numel);
      ASSERT_GT(t.units().size(), 3u);
      EXPECT_LT(max_unit, t.total_numel());
      EXPECT_EQ(plan_memory(cfg, world).staging_bytes, 4 * max_unit) << "zero " << zero << " ep " << ep;
      cfg.upcycle.from = "/nonexistent/dense";  // upcycling also holds one dense tensor (the plan reads no file)
      EXPECT_EQ(plan_memory(cfg, world).staging_bytes, 4 * (max_unit + max_entry)) << "zero " << zero;
    }
  }
}

// Staged seeded init (unit by unit through ParamState) equals the whole-table draw bitwise, ZeRO 0 and 3.
TEST(StartupStaging, SeededInitBitwiseWholeTable) {
  TmpDir d;
  auto self = make_self_communicator();
  for (int zero : {0, 3}) {
    Trainer tr(parse_config(config_text(d.path()), {"parallel.zero=" + std::to_string(zero)}, "t"), *self);
    const std::vector<float> got = tr.gather_full_params();
    const std::vector<float> want = whole_table_init(tr.model_config(), 11);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), 4 * want.size()), 0) << "zero " << zero;
    EXPECT_NE(std::count(want.begin(), want.end(), 1.f), i64(want.size()));  // not all ones: draws happened
  }
}
