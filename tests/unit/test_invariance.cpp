// Owns the Invariance.*, Determinism.* and Trainer.* tests: the §4 objective over micro-batches, §5 data order, seeded runs, memory planned once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "comm/communicator.h"
#include "config/config.h"
#include "model/model.h"
#include "train/memory_plan.h"
#include "train/trainer.h"

namespace moe {
namespace {

constexpr int kVocab = 64, kL = 16;

// A token file of random uint32 ids < vocab (DESIGN C5.tokens), written once per process.
const std::vector<uint32_t>& tokens() {
  static const std::vector<uint32_t> t = [] {
    std::mt19937_64 g(2024);
    std::vector<uint32_t> v(kL * 40 + 1);
    for (uint32_t& x : v) x = uint32_t(g() % kVocab);
    return v;
  }();
  return t;
}

const std::string& token_path() {
  static const std::string p = [] {
    // One file per process: ctest runs each test of this binary as its own process, side by side.
    const std::string path = ::testing::TempDir() + "moe_invariance_tokens_" + std::to_string(::getpid()) + ".bin";
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    for (uint32_t x : tokens()) {
      const unsigned char b[4] = {uint8_t(x), uint8_t(x >> 8), uint8_t(x >> 16), uint8_t(x >> 24)};
      f.write(reinterpret_cast<const char*>(b), 4);
    }
    return path;
  }();
  static const struct Cleanup {
    const std::string& path;
    ~Cleanup() { std::remove(path.c_str()); }
  } cleanup{p};
  return p;
}

// Tiny Mixtral-style model: hidden 32, 2 layers, 4 experts, top-2, seq_len 16.
Config make_config(int micro_batch, int grad_accum, const std::vector<std::string>& extra) {
  const std::string yaml = R"(
model:
  arch: mixtral
  vocab_size: 64
  hidden_size: 32
  intermediate_size: 24
  num_layers: 2
  num_heads: 4
  num_kv_heads: 2
  num_experts: 4
  top_k: 2
  rope_theta: 10000
train:
  seq_len: 16
  steps: 3
  lr: 3.0e-3
  warmup_steps: 1
  seed: 77
data:
  format: tokens
)";
  std::vector<std::string> ov = {"data.path=" + token_path(), "train.micro_batch=" + std::to_string(micro_batch),
                                 "train.grad_accum=" + std::to_string(grad_accum)};
  ov.insert(ov.end(), extra.begin(), extra.end());
  return parse_config(yaml, ov, "invariance.yaml");
}

// Window w of the token file (DESIGN C5.tokens): inputs tokens[w·L, w·L+L), targets shifted by one.
void window(i64 w, int32_t* in, int32_t* tg) {
  const i64 n = (i64(tokens().size()) - 1) / kL;
  w %= n;
  for (int t = 0; t < kL; ++t) {
    in[t] = int32_t(tokens()[w * kL + t]);
    tg[t] = int32_t(tokens()[w * kL + t + 1]);
  }
}

// Micro-batch m of step s on one rank (DESIGN C5.order): windows s·B + j, j in [m·mb, (m+1)·mb).
void micro_batch(const Config& c, int s, i64 m, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
  const i64 mb = c.train.micro_batch, B = mb * c.train.grad_accum;
  in.resize(mb * kL);
  tg.resize(mb * kL);
  for (i64 i = 0; i < mb; ++i) window(i64(s) * B + m * mb + i, in.data() + i * kL, tg.data() + i * kL);
}

// One process: the self communicator (every collective is the identity).
Communicator& self_comm() {
  static const std::unique_ptr<Communicator> c = make_self_communicator();
  return *c;
}

RngCtx rng_for(const Config& c, int s, i64 m) {
  RngCtx r;
  r.seed = c.train.seed;
  r.step = uint32_t(s);
  r.global_micro = int(m);
  return r;
}

// max |a − b| / max |b| over two same-size buffers.
template <typename A, typename B>
double rel_diff(const std::vector<A>& a, const std::vector<B>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::abs(double(a[i]) - double(b[i])));
    m = std::max(m, std::abs(double(b[i])));
  }
  return d / std::max(m, 1e-300);
}

// ---------------------------------------------------------------- C4.objective

TEST(Invariance, C4_objective_split) {
  // Dropless, no aux/z: the objective is CE_sum/N whatever the split, so the runs agree up to fp32 rounding.
  // AdamW turns a gradient g into ≈ lr·g/(|g| + eps): with the default eps 1e-8, fp32 rounding (~1e-8 here) in
  // near-zero gradients moves such elements by up to ±lr between splits. eps 1e-3 bounds that amplification to
  // lr·1e-5 so that the parameters show the split invariance itself; the step-0 gradients are compared directly.
  const std::vector<std::string> extra = {"moe.capacity_factor=0", "moe.aux_loss_coef=0", "moe.z_loss_coef=0",
                                          "train.eps=1e-3"};
  const int splits[3][2] = {{4, 1}, {2, 2}, {1, 4}};
  std::vector<std::vector<double>> losses(3);
  std::vector<std::vector<float>> params(3);
  std::vector<std::vector<float>> grads0(3);
  std::vector<float> init;
  for (int k = 0; k < 3; ++k) {
    Trainer tr(make_config(splits[k][0], splits[k][1], extra), self_comm());
    if (k == 0) init = tr.params();
    // The step-0 gradient itself (AdamW is nearly invariant to a gradient scale, so params alone could hide one).
    tr.compute_grads(0);
    grads0[k] = tr.grads();
    for (int s = 0; s < 3; ++s) {
      const StepResult r = tr.step(s);
      EXPECT_EQ(r.tokens, 4 * kL);
      EXPECT_EQ(r.dropped, 0);
      losses[k].push_back(r.loss);
    }
    params[k] = tr.params();
  }
  // How far training moved the parameters: differences are also judged against this.
  double moved = 0;
  for (size_t i = 0; i < init.size(); ++i) moved = std::max(moved, std::abs(double(params[0][i]) - double(init[i])));
  ASSERT_GT(moved, 0.0);
  double worst = 0, worst_moved = 0, worst_loss = 0, worst_grad = 0;
  for (int k = 1; k < 3; ++k) {
    SCOPED_TRACE("micro_batch " + std::to_string(splits[k][0]) + " x grad_accum " + std::to_string(splits[k][1]));
    for (int s = 0; s < 3; ++s) {
      EXPECT_NEAR(losses[k][s], losses[0][s], 1e-5 * std::abs(losses[0][s])) << "step " << s;
      worst_loss = std::max(worst_loss, std::abs(losses[k][s] - losses[0][s]) / std::abs(losses[0][s]));
    }
    const double grel = rel_diff(grads0[k], grads0[0]);
    EXPECT_LE(grel, 1e-5) << "step-0 gradient";
    worst_grad = std::max(worst_grad, grel);
    const double rel = rel_diff(params[k], params[0]);  // relative to the largest parameter
    EXPECT_LE(rel, 1e-5);
    worst = std::max(worst, rel);
    double d = 0;
    for (size_t i = 0; i < init.size(); ++i) d = std::max(d, std::abs(double(params[k][i]) - double(params[0][i])));
    EXPECT_LE(d / moved, 1e-3) << "relative to the largest update";
    worst_moved = std::max(worst_moved, d / moved);
  }
  EXPECT_NE(losses[0][0], losses[0][2]) << "training must move the loss";
  std::printf("[ split ] losses %.6f %.6f %.6f; worst rel diff: loss %.2e, step-0 grad %.2e, params %.2e of max|p| "
              "(%.2e of max|update|)\n", losses[0][0], losses[0][1], losses[0][2], worst_loss, worst_grad, worst, worst_moved);
}

TEST(Invariance, C4_objective_micro_terms) {
  const Config cfg = make_config(2, 2, {"moe.capacity_factor=1.0", "moe.aux_loss_coef=0.05", "moe.z_loss_coef=0.01"});
  Trainer tr(cfg, self_comm());
  const StepResult r = tr.compute_grads(0);
  ASSERT_GT(r.dropped, 0) << "capacity 1.0 should drop pairs in this setup";

  // Hand assembly: Σ_m [CE_sum_m/N + (aux_coef·aux_m + z_coef·z_m)/M], one Model<float> run per micro-batch.
  const int M = 2;
  const double N = 4.0 * kL;
  Model<float> model(cfg.model, cfg.moe, 2, kL);
  LossScales sc;
  sc.ce = 1.0 / N;
  sc.aux = cfg.moe.aux_loss_coef / M;
  sc.z = cfg.moe.z_loss_coef / M;
  std::vector<float> G(tr.grads().size(), 0.f);
  std::vector<int32_t> in, tg;
  double ce = 0, aux = 0, z = 0;
  std::vector<double> aux_m;
  for (int m = 0; m < M; ++m) {
    micro_batch(cfg, 0, m, in, tg);
    const MicroStats st = model.forward(tr.params().data(), in.data(), tg.data(), {}, rng_for(cfg, 0, m), Mode::Train);
    ce += st.ce_sum;
    aux_m.push_back(aux_loss_value(st, cfg.model, AuxForm::Layer, nullptr));
    aux += aux_m.back();
    z += z_loss_value(st);
    model.backward(tr.params().data(), G.data(), in.data(), tg.data(), sc, AuxForm::Layer, nullptr);
  }
  EXPECT_NEAR(r.loss, ce / N, 1e-12 * ce / N);
  EXPECT_NEAR(r.aux_loss, aux / M, 1e-12);
  EXPECT_NEAR(r.z_loss, z / M, 1e-12);
  EXPECT_NE(aux_m[0], aux_m[1]) << "micro-batches should differ";
  const double rel = rel_diff(tr.grads(), G);
  EXPECT_LE(rel, 1e-6);
  const bool bitwise = std::memcmp(tr.grads().data(), G.data(), G.size() * sizeof(float)) == 0;
  std::printf("[ micro terms ] trainer vs hand assembly: max-rel diff %.2e (%s); aux %.6f z %.6f dropped %lld/%lld\n",
              rel, bitwise ? "bitwise equal" : "not bitwise", r.aux_loss, r.z_loss, (long long)r.dropped,
              (long long)r.pairs);

  // Sensitivity: treating the global batch as one micro-batch changes capacity and the aux term, hence the gradient.
  Model<float> whole(cfg.model, cfg.moe, 4, kL);
  std::vector<int32_t> in4(4 * kL), tg4(4 * kL);
  for (int j = 0; j < 4; ++j) window(j, in4.data() + j * kL, tg4.data() + j * kL);
  std::vector<float> G4(G.size(), 0.f);
  whole.forward(tr.params().data(), in4.data(), tg4.data(), {}, rng_for(cfg, 0, 0), Mode::Train);
  LossScales sc4 = sc;
  sc4.aux = cfg.moe.aux_loss_coef;
  sc4.z = cfg.moe.z_loss_coef;
  whole.backward(tr.params().data(), G4.data(), in4.data(), tg4.data(), sc4, AuxForm::Layer, nullptr);
  EXPECT_GT(rel_diff(G4, G), 1e-4) << "the test cannot tell micro-batch scoping apart";
}

// ---------------------------------------------------------------- C4.aux scope global

TEST(Invariance, C4_aux_global_definition) {
  const Config cfg = make_config(2, 2, {"moe.aux_loss_scope=global", "moe.capacity_factor=1.0",
                                        "moe.aux_loss_coef=0.2", "moe.z_loss_coef=0.01", "model.init_std=0.3"});
  const ModelConfig& mc = cfg.model;
  Trainer tr(cfg, self_comm());
  const StepResult r = tr.compute_grads(0);
  const int M = 2, Lm = mc.num_layers, E = mc.num_experts;
  const double K = mc.top_k, N = 4.0 * kL, Tm = 2.0 * kL;

  // The definition by hand: f_e from routed counts over all micro-batches / global tokens, P_e per micro-batch,
  // (E/k)·Σ_e f_e·P_e per layer, mean over layers, then mean over micro-batches.
  Model<float> model(mc, cfg.moe, 2, kL);
  std::vector<MicroStats> st(M);
  std::vector<std::vector<int32_t>> in(M), tg(M);
  for (int m = 0; m < M; ++m) {
    micro_batch(cfg, 0, m, in[m], tg[m]);
    st[m] = model.forward(tr.params().data(), in[m].data(), tg[m].data(), {}, rng_for(cfg, 0, m), Mode::Train);
  }
  std::vector<std::vector<double>> routed(Lm, std::vector<double>(E, 0.0));
  for (int m = 0; m < M; ++m)
    for (int l = 0; l < Lm; ++l)
      for (int e = 0; e < E; ++e) routed[l][e] += double(st[m].router[l].routed[e]);
  double aux_def = 0;
  for (int m = 0; m < M; ++m) {
    double layers = 0;
    for (int l = 0; l < Lm; ++l) {
      double a = 0;
      for (int e = 0; e < E; ++e) a += (routed[l][e] / N) * (st[m].router[l].prob_sum[e] / Tm);
      layers += double(E) / K * a;
    }
    aux_def += layers / Lm;
  }
  aux_def /= M;
  EXPECT_NEAR(r.aux_loss, aux_def, 1e-12 * aux_def);
  // Differs from the micro-scope value on this batch (else the test would not see the scope).
  double aux_micro = 0;
  for (int m = 0; m < M; ++m) aux_micro += aux_loss_value(st[m], mc, AuxForm::Layer, nullptr) / M;
  EXPECT_GT(std::abs(aux_micro - aux_def), 1e-6);

  // Gradient: the objective J(θ) = Σ_m [CE_m/N + (aux_coef·aux_m + z_coef·z_m)/M] with the global f_e,
  // in double, differentiated by Model<double>::backward given GlobalRouting, checked by central differences.
  Model<double> dm(mc, cfg.moe, 2, kL);
  const std::vector<float> P32 = tr.params();
  std::vector<double> P(P32.begin(), P32.end());
  LossScales sc;
  sc.ce = 1.0 / N;
  sc.aux = cfg.moe.aux_loss_coef / M;
  sc.z = cfg.moe.z_loss_coef / M;
  std::vector<MicroStats> dst(M);
  GlobalRouting global;
  auto objective = [&] {
    global.routed.assign(Lm, std::vector<double>(E, 0.0));
    global.tokens = N;
    for (int m = 0; m < M; ++m) {
      dst[m] = dm.forward(P.data(), in[m].data(), tg[m].data(), {}, rng_for(cfg, 0, m), Mode::Train);
      for (int l = 0; l < Lm; ++l)
        for (int e = 0; e < E; ++e) global.routed[l][e] += double(dst[m].router[l].routed[e]);
    }
    double J = 0;
    for (int m = 0; m < M; ++m)
      J += dst[m].ce_sum * sc.ce + sc.aux * aux_loss_value(dst[m], mc, AuxForm::Layer, &global) +
           sc.z * z_loss_value(dst[m]);
    return J;
  };
  objective();
  const GlobalRouting global0 = global;
  std::vector<std::vector<i64>> dropped0;
  for (int m = 0; m < M; ++m)
    for (int l = 0; l < Lm; ++l) {
      dropped0.push_back({dst[m].router[l].dropped});
      for (int e = 0; e < E; ++e) EXPECT_EQ(dst[m].router[l].routed[e], st[m].router[l].routed[e]) << "fp32/fp64 routing differ";
    }
  auto same = [&] {
    size_t i = 0;
    for (int m = 0; m < M; ++m)
      for (int l = 0; l < Lm; ++l)
        if (dst[m].router[l].dropped != dropped0[i++][0]) return false;
    return global.routed == global0.routed;
  };
  std::vector<double> G(P.size(), 0.0);
  for (int m = 0; m < M; ++m) {
    dm.forward(P.data(), in[m].data(), tg[m].data(), {}, rng_for(cfg, 0, m), Mode::Train);
    dm.backward(P.data(), G.data(), in[m].data(), tg[m].data(), sc, AuxForm::Layer, &global0);
  }
  // The fp32 trainer gradient agrees with the fp64 one.
  const double rel32 = rel_diff(tr.grads(), G);
  EXPECT_LE(rel32, 1e-4);

  double gscale = 0;
  for (double v : G) gscale = std::max(gscale, std::abs(v));
  std::mt19937_64 g(3);
  const double eps = 1e-6;
  int checked = 0, skipped = 0;
  double worst = 0;
  std::string worst_name;
  const double J0 = objective();
  for (const ParamInfo& p : dm.table().entries()) {
    double dmax = 0, gmax = 0;
    for (int k = 0; k < 4; ++k) {
      const size_t i = size_t(p.offset) + size_t(k == 0 ? 0 : g() % p.numel);
      const double orig = P[i];
      P[i] = orig + eps;
      const double Jp = objective();
      bool ok = same();
      P[i] = orig - eps;
      const double Jm = objective();
      ok = ok && same();
      P[i] = orig;
      const double jump = std::abs((Jp - J0) - (J0 - Jm)) / eps;
      if (!ok || jump > 1e-4 + 1e-3 * std::abs(G[i])) {
        ++skipped;
        continue;
      }
      ++checked;
      const double num = (Jp - Jm) / (2 * eps);
      dmax = std::max(dmax, std::abs(num - G[i]));
      gmax = std::max({gmax, std::abs(num), std::abs(G[i])});
    }
    const double rel = dmax / std::max(gmax, 1e-3 * gscale);  // floor: tensors with ~zero gradient
    EXPECT_LE(rel, 1e-5) << p.name << ": max|fd−analytic| " << dmax << " over " << gmax;
    if (rel > worst) {
      worst = rel;
      worst_name = p.name;
    }
  }
  EXPECT_GE(checked, 9 * (checked + skipped) / 10);
  std::printf("[ aux global ] aux %.6f (micro scope would be %.6f); fp32 trainer vs fp64 grads max-rel %.2e; "
              "fd: %d checked, %d skipped, worst rel %.2e (%s)\n",
              r.aux_loss, aux_micro, rel32, checked, skipped, worst, worst_name.c_str());
}

// ---------------------------------------------------------------- determinism, memory plan

TEST(Determinism, SameSeedSameRun) {
  const std::vector<std::string> extra = {"moe.router_jitter=0.1", "moe.expert_dropout=0.1", "moe.capacity_factor=1.25",
                                          "moe.aux_loss_coef=0.01", "moe.z_loss_coef=0.001"};
  std::vector<float> p[2];
  std::vector<StepResult> res[2];
  for (int k = 0; k < 2; ++k) {
    Trainer tr(make_config(2, 2, extra), self_comm());
    for (int s = 0; s < 3; ++s) res[k].push_back(tr.step(s));
    p[k] = tr.params();
  }
  ASSERT_EQ(p[0].size(), p[1].size());
  EXPECT_EQ(std::memcmp(p[0].data(), p[1].data(), p[0].size() * sizeof(float)), 0) << "params not bitwise equal";
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(res[0][s].expert_load, res[1][s].expert_load) << "step " << s;
    EXPECT_EQ(res[0][s].dropped, res[1][s].dropped) << "step " << s;
    EXPECT_EQ(res[0][s].aux_loss, res[1][s].aux_loss) << "step " << s;
    // loss and grad_norm come from `omp parallel for reduction(+)` sums (cross_entropy_forward_ref,
    // grad_sq_sum), whose combining order follows thread timing with more than 2 threads: equal only to
    // rounding until those sums are made ordered.
    EXPECT_NEAR(res[0][s].loss, res[1][s].loss, 1e-12 * res[0][s].loss) << "step " << s;
    EXPECT_NEAR(res[0][s].grad_norm, res[1][s].grad_norm, 1e-12 * res[0][s].grad_norm) << "step " << s;
  }
  // And the random draws matter: another seed gives other parameters.
  std::vector<std::string> other_extra = extra;
  other_extra.push_back("train.seed=78");
  Trainer other(make_config(2, 2, other_extra), self_comm());
  for (int s = 0; s < 3; ++s) other.step(s);
  EXPECT_NE(std::memcmp(other.params().data(), p[0].data(), p[0].size() * sizeof(float)), 0);
}

TEST(Trainer, ArenaHighWaterUnchanged) {
  // Activation memory is sized once from the config, before step 0 (what --dry-run prints), and no step changes it.
  const Config cfg = make_config(2, 2, {"moe.capacity_factor=1.25", "moe.router_jitter=0.1", "moe.expert_dropout=0.1",
                                        "moe.z_loss_coef=0.001"});
  const i64 planned = plan_memory(cfg, 1).activation_bytes;
  Trainer tr(cfg, self_comm());
  const i64 before = tr.model().activation_bytes();
  EXPECT_GT(before, 0);
  EXPECT_EQ(before, planned) << "--dry-run plan and the trainer's arena differ";
  for (int s = 0; s < 3; ++s) {
    tr.step(s);
    EXPECT_EQ(tr.model().activation_bytes(), before) << "after step " << s;
  }
  // The same for a Model driven directly through Train and Eval forwards and backwards.
  Model<float> model(cfg.model, cfg.moe, cfg.train.micro_batch, cfg.train.seq_len);
  EXPECT_EQ(model.activation_bytes(), before);
  std::vector<float> params = tr.params(), grads(params.size(), 0.f);
  std::vector<int32_t> in, tg;
  LossScales sc{1.0 / 64, 0.01 / 2, 0.001 / 2};
  for (int m = 0; m < 2; ++m) {
    micro_batch(cfg, 0, m, in, tg);
    model.forward(params.data(), in.data(), tg.data(), {}, rng_for(cfg, 0, m), Mode::Train);
    model.backward(params.data(), grads.data(), in.data(), tg.data(), sc, AuxForm::Layer, nullptr);
    EXPECT_EQ(model.activation_bytes(), before);
  }
  model.forward(params.data(), in.data(), tg.data(), {}, rng_for(cfg, 0, 0), Mode::Eval);
  EXPECT_EQ(model.activation_bytes(), before);
}

}  // namespace
}  // namespace moe
