// Owns the Recompute.* tests: train.recompute gives the gradients of no recomputation bit for bit, with less activation memory [C6.recompute].
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "config/config.h"
#include "model/model.h"
#include "train/memory_plan.h"

namespace moe {
namespace {

constexpr int kB = 2, kL = 16, kVocab = 64;

// Mixtral-style (capacity drops, jitter, expert dropout, z-loss) and Qwen3-style (q/k norms, a dense layer,
// sliding window, tied embeddings, dropless, hf aux form) models, both with the random draws on.
Config make_config(const std::string& arch) {
  const std::string mixtral = R"(
model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 24, num_layers: 3, num_heads: 4,
        num_kv_heads: 2, num_experts: 4, top_k: 2, rope_theta: 10000}
moe: {capacity_factor: 1.0, router_jitter: 0.1, expert_dropout: 0.2, z_loss_coef: 0.001, aux_loss_coef: 0.01}
)";
  const std::string qwen3 = R"(
model: {arch: qwen3_moe, vocab_size: 64, hidden_size: 32, intermediate_size: 40, moe_intermediate_size: 16,
        num_layers: 3, num_heads: 4, num_kv_heads: 2, head_dim: 12, num_experts: 4, top_k: 2, mlp_only_layers: [1],
        sliding_window: 6, tie_word_embeddings: true}
moe: {capacity_factor: 0, router_jitter: 0.05, expert_dropout: 0.1, z_loss_coef: 0.002, aux_loss_form: hf}
)";
  return parse_config((arch == "mixtral" ? mixtral : qwen3) + "data: {format: tokens, path: unused.bin}\n", {},
                      "recompute.yaml");
}

struct RunResult {
  std::vector<float> grads;
  std::vector<double> ce;
  i64 activation_bytes = 0;
};

// Two micro-batches (forward + backward each, gradients accumulated), a non-zero selection bias, Train mode.
RunResult run_model(const Config& cfg, Recompute rc) {
  ModelOptions opt;
  opt.recompute = rc;
  Model<float> model(cfg.model, cfg.moe, kB, kL, opt);
  const ParamTable& t = model.table();
  std::vector<float> params(size_t(t.total_numel()), 0.f);
  std::mt19937_64 g(99);
  std::normal_distribution<float> nd(0.f, 0.08f);
  for (const ParamInfo& p : t.entries())
    for (i64 i = 0; i < p.numel; ++i) params[size_t(p.offset + i)] = p.is_norm ? 1.f + nd(g) : nd(g);
  std::vector<std::vector<float>> bias(size_t(model.num_moe_layers()), std::vector<float>(cfg.model.num_experts));
  for (auto& b : bias)
    for (float& x : b) x = 0.01f * nd(g);
  RunResult r;
  r.grads.assign(params.size(), 0.f);
  r.activation_bytes = model.activation_bytes();
  std::vector<int32_t> in(kB * kL), tg(kB * kL);
  const LossScales sc{1.0 / (2 * kB * kL), 0.01 / 2, 0.001 / 2};
  for (int m = 0; m < 2; ++m) {
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = int32_t(g() % kVocab);
      tg[i] = int32_t(g() % kVocab);
    }
    RngCtx rng;
    rng.seed = 5;
    rng.step = 3;
    rng.global_micro = m;
    const MicroStats st = model.forward(params.data(), in.data(), tg.data(), bias, rng, Mode::Train);
    r.ce.push_back(st.ce_sum);
    model.backward(params.data(), r.grads.data(), in.data(), tg.data(), sc, cfg.moe.aux_loss_form, nullptr);
  }
  return r;
}

// contract: C6.recompute
TEST(Recompute, C6_recompute_grads_bitwise) {
  for (const std::string arch : {"mixtral", "qwen3"}) {
    SCOPED_TRACE(arch);
    const Config cfg = make_config(arch);
    const RunResult none = run_model(cfg, Recompute::None);
    double gmax = 0;
    for (float x : none.grads) gmax = std::max(gmax, double(std::abs(x)));
    ASSERT_GT(gmax, 0.0) << "no gradient to compare";
    for (Recompute rc : {Recompute::Selective, Recompute::Full}) {
      SCOPED_TRACE(rc == Recompute::Selective ? "selective" : "full");
      const RunResult r = run_model(cfg, rc);
      ASSERT_EQ(r.grads.size(), none.grads.size());
      EXPECT_EQ(r.ce, none.ce);
      size_t first = r.grads.size();
      for (size_t i = 0; i < r.grads.size() && first == r.grads.size(); ++i)
        if (std::memcmp(&r.grads[i], &none.grads[i], sizeof(float)) != 0) first = i;
      EXPECT_EQ(first, r.grads.size()) << "gradient " << first << " differs: " << r.grads[first] << " vs "
                                       << none.grads[first];
      EXPECT_LT(r.activation_bytes, none.activation_bytes);
    }
  }
}

// contract: C6.recompute
TEST(Recompute, C6_recompute_activation_bytes_shrink) {
  // The Mixtral config as shipped (plan only): what --dry-run prints for 8 ranks, one mode after the other.
  const Config base = load_config(std::string(MOE_SOURCE_DIR) + "/configs/mixtral.yaml", {});
  i64 prev = 0;
  for (Recompute rc : {Recompute::None, Recompute::Selective, Recompute::Full}) {
    Config c = base;
    c.train.recompute = rc;
    const i64 bytes = plan_memory(c, 8).activation_bytes;
    std::printf("mixtral.yaml, 8 ranks, recompute %d: activations %lld bytes (%.2f GiB)\n", int(rc), (long long)bytes,
                double(bytes) / (1 << 30));
    if (prev > 0) {
      EXPECT_LT(bytes, prev);
    }
    prev = bytes;
  }
}

TEST(Recompute, ConfigKey) {
  EXPECT_EQ(make_config("mixtral").train.recompute, Recompute::None);
  const std::string y = "train: {recompute: selective}\n";
  EXPECT_EQ(parse_config(y, {}, "r.yaml").train.recompute, Recompute::Selective);
  EXPECT_EQ(parse_config(y, {"train.recompute=full"}, "r.yaml").train.recompute, Recompute::Full);
  try {
    parse_config(y, {"train.recompute=attention"}, "r.yaml");
    ADD_FAILURE() << "train.recompute=attention accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(std::string(e.what()).find("train.recompute"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
