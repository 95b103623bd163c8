// Owns the cost model's unit tests: fit recovery on a synthetic moe_bench.csv from known rates and α-β, held-out error, ep = 1 all-to-alls, CSV errors, extrapolation sanity and a hand-computed hierarchical all-to-all.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/cost_model.h"
#include "test_util.h"

namespace moe {
namespace {

// The machine the synthetic bench "measured": ms = intercept + work · ms_per_unit (rates as the header defines
// them). GFLOP/s g with f flops per unit → f / (g·1e9) s = f / g · 1e-6 ms per unit.
struct Truth {
  double route0 = 0.01, route_gflops = 20, route_bwd0 = 0.015, route_bwd_gflops = 15;
  double plan0 = 0.02, plan_per_slot = 5e-6, plan_per_expert = 1e-3, plan_per_peer = 0.03;
  double permute0 = 0.005, permute_gbps = 8;  // 4-byte elements
  double experts0 = 0.05, experts_gflops = 50, experts_bwd0 = 0.08, experts_bwd_gflops = 40;
  // α (ms per peer) and 1/β (GB/s) of dispatch, combine, combine_bwd, dispatch_bwd.
  double alpha_ms[4] = {0.02, 0.025, 0.018, 0.022};
  double a2a_gbps[4] = {2.0, 2.5, 1.8, 2.2};
  bool negative_route_intercept = false;  // route = work slope − 0.01 ms: the best line has a negative intercept
};

constexpr MoePhase kA2A[4] = {MoePhase::DispatchA2A, MoePhase::CombineA2A, MoePhase::CombineA2ABwd,
                              MoePhase::DispatchA2ABwd};

// Deterministic noise in [-1, 1] (LCG).
struct Noise {
  uint64_t s = 12345;
  double next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return double(s >> 11) / double(1ULL << 53) * 2 - 1;
  }
};

std::string header() {
  std::string h = "ep,tokens,hidden,ffn,experts,topk,capacity_factor,repeats";
  for (const char* p : kMoePhaseName) h += std::string(",") + p + "_ms," + p + "_p10_ms," + p + "_p90_ms";
  return h + ",fwd_ms,bwd_ms,layer_ms,overhead_pct,a2a_send_bytes_max,a2a_recv_bytes_max,rows_max,held_out";
}

// Writes a sweep ep × T × H × E × K = 3·3·2·2·2 = 72 rows (rows 4, 9, 14, ... held out) measured on `truth` with ±noise relative jitter.
struct Sweep {
  bool held_out = true;
  int only_ep = 0;  // > 0: that ep only
  std::vector<double> Es{8, 16};
};
// Returns the path.
std::string write_synthetic_csv(const std::string& path, const Truth& tr, double noise, const Sweep& sw = {}) {
  std::ofstream f(path);
  f.precision(12);
  f << header() << "\n";
  Noise nz;
  int row = 0;
  for (int ep : {1, 2, 4})
    for (double T : {256.0, 1024.0, 4096.0})
      for (double H : {128.0, 256.0})
        for (double E : sw.Es)
          for (double K : {1.0, 2.0}) {
            if (sw.only_ep && ep != sw.only_ep) continue;
            const double I = 2 * H, cf = 1.25;
            const double rows = T * K * (1 + 0.15 * (nz.next() + 1) / 2);  // busiest rank ≥ the mean
            const double send = ep > 1 ? T * K * H * 4 * (ep - 1) / ep : 0;
            const double recv = send * (1 + 0.1 * (nz.next() + 1) / 2);
            const double the = T * H * E, tkh = T * K * H, rhi = rows * H * I;
            double ms[kMoePhases];
            ms[int(MoePhase::Route)] = (tr.negative_route_intercept ? -0.01 : tr.route0) + 2 * the / tr.route_gflops * 1e-6;
            ms[int(MoePhase::RouteBwd)] = tr.route_bwd0 + 4 * the / tr.route_bwd_gflops * 1e-6;
            ms[int(MoePhase::Plan)] = tr.plan0 + tr.plan_per_slot * T * K + tr.plan_per_expert * E + tr.plan_per_peer * (ep - 1);
            for (MoePhase p : {MoePhase::Permute, MoePhase::Unpermute, MoePhase::UnpermuteBwd, MoePhase::PermuteBwd})
              ms[int(p)] = tr.permute0 + 4 * tkh / tr.permute_gbps * 1e-6;
            ms[int(MoePhase::Experts)] = tr.experts0 + 6 * rhi / tr.experts_gflops * 1e-6;
            ms[int(MoePhase::ExpertsBwd)] = tr.experts_bwd0 + 12 * rhi / tr.experts_bwd_gflops * 1e-6;
            for (int a = 0; a < 4; ++a) {
              const double bytes = (a == 0 || a == 2) ? send : recv;
              ms[int(kA2A[a])] = ep > 1 ? tr.alpha_ms[a] * (ep - 1) + bytes / tr.a2a_gbps[a] * 1e-6 : 0.0005;
            }
            double fwd = 0, bwd = 0;
            for (int p = 0; p < kMoePhases; ++p) {
              ms[p] *= 1 + noise * nz.next();
              (p < kMoeForwardPhases ? fwd : bwd) += ms[p];
            }
            const double layer = fwd + bwd;
            const double overhead = 100 * (layer - ms[int(MoePhase::Experts)] - ms[int(MoePhase::ExpertsBwd)]) / layer;
            f << ep << "," << T << "," << H << "," << I << "," << E << "," << K << "," << cf << ",5";
            for (int p = 0; p < kMoePhases; ++p) f << "," << ms[p] << "," << 0.95 * ms[p] << "," << 1.05 * ms[p];
            f << "," << fwd << "," << bwd << "," << layer << "," << overhead << "," << send << "," << recv << ","
              << rows << "," << (sw.held_out && row % 5 == 4 ? 1 : 0) << "\n";
            ++row;
          }
  return path;
}

double coef(const CostFit& fit, MoePhase p, size_t term) { return fit.phases[size_t(p)].coef_ms.at(term); }

TEST(CostModel, FitRecoversSyntheticRatesAndAlphaBeta) {
  test::TmpDir dir;
  const Truth tr;
  const std::vector<CostSample> samples = read_bench_csv(write_synthetic_csv(dir / "bench.csv", tr, 0.02));
  ASSERT_EQ(samples.size(), 72u);
  CostFit fit;
  std::vector<SamplePrediction> preds;
  const Validation v = validate_cost_model(samples, FitOptions{}, &fit, &preds);
  EXPECT_EQ(v.method, ValidationMethod::HeldOut);
  EXPECT_EQ(v.rows, 14);  // rows 4, 9, ..., 69
  EXPECT_EQ(fit.rows, 58);
  EXPECT_EQ(fit.ep_max, 4);
  std::string unit;
  EXPECT_NEAR(phase_rate(fit, MoePhase::Route, &unit), tr.route_gflops, 0.03 * tr.route_gflops);
  EXPECT_EQ(unit, "GFLOP/s");
  EXPECT_NEAR(phase_rate(fit, MoePhase::RouteBwd, &unit), tr.route_bwd_gflops, 0.03 * tr.route_bwd_gflops);
  EXPECT_NEAR(phase_rate(fit, MoePhase::Experts, &unit), tr.experts_gflops, 0.03 * tr.experts_gflops);
  EXPECT_NEAR(phase_rate(fit, MoePhase::ExpertsBwd, &unit), tr.experts_bwd_gflops, 0.03 * tr.experts_bwd_gflops);
  for (MoePhase p : {MoePhase::Permute, MoePhase::Unpermute, MoePhase::UnpermuteBwd, MoePhase::PermuteBwd}) {
    EXPECT_NEAR(phase_rate(fit, p, &unit), tr.permute_gbps, 0.03 * tr.permute_gbps) << phase_name(p);
    EXPECT_EQ(unit, "GB/s");
  }
  EXPECT_NEAR(coef(fit, MoePhase::Plan, 1), tr.plan_per_slot, 0.05 * tr.plan_per_slot);
  EXPECT_NEAR(coef(fit, MoePhase::Plan, 3), tr.plan_per_peer, 0.05 * tr.plan_per_peer);
  for (int a = 0; a < 4; ++a) {
    EXPECT_NEAR(a2a_alpha_us(fit, kA2A[a]), tr.alpha_ms[a] * 1e3, 0.08 * tr.alpha_ms[a] * 1e3) << phase_name(kA2A[a]);
    EXPECT_NEAR(phase_rate(fit, kA2A[a], &unit), tr.a2a_gbps[a], 0.04 * tr.a2a_gbps[a]) << phase_name(kA2A[a]);
    EXPECT_EQ(fit.phases[size_t(kA2A[a])].rows, 38);  // the ep > 1 rows (24..71) minus the 10 held out
  }
  // 2 % noise per phase: the held-out layer time is predicted to a few percent.
  EXPECT_LT(v.layer_mape_mean, 2.0);
  EXPECT_LT(v.layer_mape_max, 5.0);
  EXPECT_LT(v.overhead_err_pp_mean, 1.0);
  for (int p = 0; p < kMoePhases; ++p) {
    if (is_a2a_phase(MoePhase(p))) continue;
    EXPECT_EQ(v.phases[size_t(p)].rows, 14) << kMoePhaseName[p];
    EXPECT_LT(v.phases[size_t(p)].mape_mean, 4.0) << kMoePhaseName[p];
  }
  EXPECT_NEAR(v.phase_sum_vs_layer_pct, 0, 1e-6);  // the synthetic layer is the sum of its phases
}

TEST(CostModel, EpOneRowsPredictZeroAllToAll) {
  test::TmpDir dir;
  const std::vector<CostSample> samples = read_bench_csv(write_synthetic_csv(dir / "bench.csv", Truth{}, 0.02));
  CostFit fit;
  std::vector<SamplePrediction> preds;
  const Validation v = validate_cost_model(samples, FitOptions{}, &fit, &preds);
  EXPECT_EQ(v.ep1_a2a_rows, 4);  // held-out rows 4, 9, 14, 19 of the 24 ep = 1 rows
  int ep1 = 0;
  for (const SamplePrediction& sp : preds) {
    const CostSample& s = samples[size_t(sp.index)];
    for (MoePhase a : kA2A) {
      if (s.ep == 1) EXPECT_EQ(sp.pred_ms[size_t(a)], 0.0);
      else EXPECT_GT(sp.pred_ms[size_t(a)], 0.0);
    }
    ep1 += s.ep == 1;
  }
  EXPECT_EQ(ep1, 24);
  // Even with bytes given, ep = 1 is no exchange.
  PhaseWork w = work_of(samples[0]);
  w.ep = 1;
  w.send_bytes = w.recv_bytes = 1e9;
  for (MoePhase a : kA2A) EXPECT_EQ(predict_phase_ms(fit, a, w), 0.0);
  for (MoePhase a : kA2A) EXPECT_EQ(v.phases[size_t(a)].rows, 10) << phase_name(a);  // the ep > 1 held-out rows
}

TEST(CostModel, OnlyEpOneRowsLeaveTheAllToAllsUnfitted) {
  test::TmpDir dir;
  const std::vector<CostSample> samples =
      read_bench_csv(write_synthetic_csv(dir / "bench.csv", Truth{}, 0.0, Sweep{true, 1}));
  const CostFit fit = fit_cost_model(samples);
  for (MoePhase a : kA2A) {
    EXPECT_FALSE(fit.phases[size_t(a)].fitted);
    PhaseWork w;
    w.ep = 4;
    w.send_bytes = w.recv_bytes = 1e6;
    EXPECT_EQ(predict_phase_ms(fit, a, w), 0.0);
  }
}

TEST(CostModel, NegativeTermsAreDroppedAndRefitted) {
  test::TmpDir dir;
  Truth tr;
  tr.negative_route_intercept = true;
  const CostFit fit = fit_cost_model(read_bench_csv(write_synthetic_csv(dir / "bench.csv", tr, 0.0, Sweep{false})));
  const PhaseFit& route = fit.phases[size_t(MoePhase::Route)];
  // Unconstrained, the exact fit is −0.01 ms + slope·T·H·E; the intercept is dropped and the slope refitted.
  EXPECT_TRUE(route.dropped[0]);
  EXPECT_EQ(route.coef_ms[0], 0.0);
  EXPECT_GT(route.coef_ms[1], 0.0);
  for (const PhaseFit& pf : fit.phases)
    for (double c : pf.coef_ms) EXPECT_GE(c, 0.0) << phase_name(pf.phase);
}

TEST(CostModel, TermTheSweepDidNotVaryIsCarriedByTheIntercept) {
  test::TmpDir dir;
  const Truth tr;
  Sweep sw;
  sw.held_out = false;
  sw.Es = {8};
  const CostFit fit = fit_cost_model(read_bench_csv(write_synthetic_csv(dir / "bench.csv", tr, 0.0, sw)));
  const PhaseFit& plan = fit.phases[size_t(MoePhase::Plan)];
  ASSERT_EQ(plan.term_names[2], "E");
  EXPECT_TRUE(plan.dropped[2]);
  EXPECT_EQ(plan.coef_ms[2], 0.0);
  EXPECT_NEAR(plan.coef_ms[0], tr.plan0 + 8 * tr.plan_per_expert, 1e-6);  // intercept = 0.02 + 8·1e-3 ms
  EXPECT_NEAR(plan.coef_ms[1], tr.plan_per_slot, 1e-3 * tr.plan_per_slot);
  EXPECT_FALSE(plan.dropped[1]);
  EXPECT_FALSE(plan.dropped[3]);
}

TEST(CostModel, LeaveOneOutWithoutHeldOutRows) {
  test::TmpDir dir;
  const std::vector<CostSample> samples =
      read_bench_csv(write_synthetic_csv(dir / "bench.csv", Truth{}, 0.02, Sweep{false}));
  CostFit fit;
  std::vector<SamplePrediction> preds;
  const Validation v = validate_cost_model(samples, FitOptions{}, &fit, &preds);
  EXPECT_EQ(v.method, ValidationMethod::LeaveOneOut);
  EXPECT_EQ(v.rows, 72);
  EXPECT_EQ(fit.rows, 72);
  EXPECT_LT(v.layer_mape_mean, 2.0);
  CostReport r = run_cost_model(samples, ScaleTarget{}, {net_preset("nvlink-ib")});
  std::ostringstream os;
  print_validation(os, r);
  EXPECT_NE(os.str().find("leave-one-out prediction error (no held-out rows in the CSV): layer "), std::string::npos)
      << os.str();
}

std::string write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

// A good data row for header(): every field 1 except held_out 0.
std::string good_row() {
  std::string r;
  const std::string h = header();
  const size_t n = size_t(std::count(h.begin(), h.end(), ',')) + 1;
  for (size_t i = 0; i + 1 < n; ++i) r += "1,";
  return r + "0";
}

TEST(CostModel, MalformedCsvNamesFileAndLine) {
  test::TmpDir dir;
  const std::string h = header() + "\n", g = good_row() + "\n";
  std::string bad = g;
  bad.replace(bad.find(",1,"), 3, ",abc,");  // tokens
  test::expect_bad_input([&] { read_bench_csv(write_text(dir / "a.csv", h + g + "\n" + bad)); },
                         {"a.csv:4", "column tokens", "abc"});
  test::expect_bad_input([&] { read_bench_csv(write_text(dir / "b.csv", h + g + "1,2,3\n")); },
                         {"b.csv:3", "3 fields"});
  std::string no_rows = header();
  no_rows.erase(no_rows.find(",rows_max"), 9);
  test::expect_bad_input([&] { read_bench_csv(write_text(dir / "c.csv", no_rows + "\n")); },
                         {"c.csv:1", "no column rows_max"});
  std::string held2 = g;
  held2.replace(held2.size() - 2, 1, "2");
  test::expect_bad_input([&] { read_bench_csv(write_text(dir / "d.csv", h + held2)); }, {"d.csv:2", "held_out"});
  std::string negative = g;
  negative.replace(negative.find("1,1,1,1,1,1,1,1,1"), 17, "1,1,1,1,1,1,1,1,-1");  // route_ms
  test::expect_bad_input([&] { read_bench_csv(write_text(dir / "e.csv", h + negative)); },
                         {"e.csv:2", "route_ms", ">= 0"});
  test::expect_bad_input([&] { read_bench_csv(write_text(dir / "f.csv", h)); }, {"f.csv", "no data rows"});
  test::expect_bad_input([&] { read_bench_csv(dir / "missing.csv"); }, {"missing.csv", "cannot open"});
  EXPECT_EQ(read_bench_csv(write_text(dir / "ok.csv", h + g + "\r\n")).size(), 1u);
}

TEST(CostModel, HierarchicalAllToAllHandComputed) {
  const NetLinks ib = net_preset("nvlink-ib"), eth = net_preset("nvlink-eth");
  // 16 MB over ep = 16 on 8-GPU nodes: 7/16 to node peers (7 messages at 3 us, 7e6 B / 450 GB/s = 15.556 us),
  // 8/16 to the other node (1 message at 5 us, 8e6 B / 50 GB/s = 160 us): 201.556 us.
  EXPECT_NEAR(hierarchical_a2a_ms(16e6, 16, 8, ib), 0.2015556, 1e-6);
  // ep = 4 within one node: 3·3 us + 12e6 B / 450 GB/s (26.667 us) = 35.667 us.
  EXPECT_NEAR(hierarchical_a2a_ms(16e6, 4, 8, ib), 0.0356667, 1e-6);
  // ep = 64 over 8 nodes, Ethernet: 7·3 + 1.75e6/450e9 s (3.889 us) + 7·20 + 14e6 B / 12.5 GB/s (1120 us) = 1284.889 us.
  EXPECT_NEAR(hierarchical_a2a_ms(16e6, 64, 8, eth), 1.2848889, 1e-6);
  EXPECT_EQ(hierarchical_a2a_ms(16e6, 1, 8, ib), 0.0);
}

TEST(CostModel, EpRule) {
  ScaleTarget t;
  t.experts = 8;
  EXPECT_EQ(ep_for(t, 8), 8);
  EXPECT_EQ(ep_for(t, 1024), 8);
  t.experts = 64;
  EXPECT_EQ(ep_for(t, 16), 16);
  EXPECT_EQ(ep_for(t, 512), 64);
  t.ep_max = 32;
  EXPECT_EQ(ep_for(t, 512), 32);
  t.ep_max = 0;
  t.experts = 6;
  EXPECT_EQ(ep_for(t, 8), 2);  // the largest divisor of both 6 and 8
  EXPECT_EQ(ep_for(t, 12), 6);
}

class CostModelScale : public ::testing::Test {
 protected:
  void SetUp() override {
    test::TmpDir dir;
    fit_ = fit_cost_model(read_bench_csv(write_synthetic_csv(dir / "bench.csv", Truth{}, 0.0, Sweep{false})));
  }
  CostFit fit_;
};

TEST_F(CostModelScale, DispatchBytesPerGpuConstantOnceEpSaturates) {
  ScaleTarget t;  // H 4096, E 8, K 2, T 4096, cf 1.25
  t.elem_bytes = 2;
  const ScaleTable tb = extrapolate(fit_, t, net_preset("nvlink-ib"));
  ASSERT_EQ(tb.rows.size(), 8u);  // 8, 16, ..., 1024
  EXPECT_EQ(tb.rows.front().gpus, 8);
  EXPECT_EQ(tb.rows.back().gpus, 1024);
  // 4 exchanges of T·K·H·2 B = 67,108,864 B, 7/8 of it to other GPUs: 234,881,024 B.
  for (const ScaleRow& r : tb.rows) {
    EXPECT_EQ(r.ep, 8);
    EXPECT_EQ(r.edp, r.gpus / 8);
    EXPECT_DOUBLE_EQ(r.a2a_bytes_gpu, 234881024.0) << r.gpus;
    EXPECT_DOUBLE_EQ(r.remote_share, 0.0);
    EXPECT_NEAR(r.tok_s_total, r.tok_s_gpu * r.gpus, 1e-6 * r.tok_s_total);
  }
  EXPECT_EQ(tb.rows.back().nodes, 128);
}

TEST_F(CostModelScale, RemoteShareGrowsPastOneNodeAndEthernetCostsMore) {
  ScaleTarget t;
  t.experts = 64;
  t.compute_speedup = 1000;  // a GPU-like compute speed so that the network matters
  const ScaleTable ib = extrapolate(fit_, t, net_preset("nvlink-ib"));
  const ScaleTable eth = extrapolate(fit_, t, net_preset("nvlink-eth"));
  const double expect_share[] = {0, 0.5, 0.75, 0.875, 0.875, 0.875, 0.875, 0.875};  // (ep − 8)/ep, ep = min(G, 64)
  ASSERT_EQ(ib.rows.size(), 8u);
  for (size_t i = 0; i < ib.rows.size(); ++i) {
    EXPECT_DOUBLE_EQ(ib.rows[i].remote_share, expect_share[i]) << ib.rows[i].gpus;
    if (i > 0 && ib.rows[i].ep > ib.rows[i - 1].ep) {
      EXPECT_GT(ib.rows[i].a2a_ms, ib.rows[i - 1].a2a_ms);
    }
    if (expect_share[i] > 0) {
      EXPECT_GT(eth.rows[i].overhead_pct, ib.rows[i].overhead_pct) << ib.rows[i].gpus;
      EXPECT_LT(eth.rows[i].tok_s_gpu, ib.rows[i].tok_s_gpu) << ib.rows[i].gpus;
    } else {  // one node: the inter-node link is unused
      EXPECT_DOUBLE_EQ(eth.rows[i].layer_ms, ib.rows[i].layer_ms);
    }
  }
  // The 4 exchanges of one row are the hierarchical time of T·K·H·4 B each.
  EXPECT_NEAR(ib.rows[1].a2a_ms, 4 * hierarchical_a2a_ms(4096.0 * 2 * 4096 * 4, 16, 8, ib.net), 1e-12);
}

TEST(CostModel, FittedPointUsesTheBenchAlphaBeta) {
  test::TmpDir dir;
  const Truth tr;
  const CostFit fit = fit_cost_model(read_bench_csv(write_synthetic_csv(dir / "bench.csv", tr, 0.0, Sweep{false})));
  ScaleTarget t;
  t.hidden = 256;
  t.ffn = 512;
  t.tokens = 1024;
  const ScaleRow r = fitted_point(fit, t);
  EXPECT_EQ(r.ep, 4);
  // Each exchange: α·3 + (1024·2·256·4 B · 3/4) / rate.
  const double bytes = 1024.0 * 2 * 256 * 4 * 3 / 4;
  double a2a = 0;
  for (int a = 0; a < 4; ++a) a2a += tr.alpha_ms[a] * 3 + bytes / tr.a2a_gbps[a] * 1e-6;
  EXPECT_NEAR(r.a2a_ms, a2a, 0.01 * a2a);
  EXPECT_DOUBLE_EQ(r.a2a_bytes_gpu, 4 * bytes);
}

TEST(CostModel, ReportPrintsTableMarkdownAndJson) {
  test::TmpDir dir;
  const std::vector<CostSample> samples = read_bench_csv(write_synthetic_csv(dir / "bench.csv", Truth{}, 0.02));
  CostReport r = run_cost_model(samples, ScaleTarget{}, {net_preset("nvlink-ib"), net_preset("nvlink-eth")});
  std::ostringstream val, table;
  print_validation(val, r);
  EXPECT_NE(val.str().find("held-out prediction error: layer "), std::string::npos) << val.str();
  EXPECT_NE(val.str().find("dispatch_a2a"), std::string::npos);
  print_scale_table(table, r);
  EXPECT_NE(table.str().find("1024"), std::string::npos) << table.str();
  EXPECT_NE(table.str().find("bench"), std::string::npos);
  const std::string md = scale_table_markdown(r);
  EXPECT_NE(md.find("| GPUs | nodes | ep |"), std::string::npos) << md;
  EXPECT_EQ(std::count(md.begin(), md.end(), '\n'), 2 + 2 + 1 + 8);  // caption, blank, header, rule, bench, 8 rows
  const nlohmann::json j = cost_report_json(r);
  EXPECT_EQ(j["validation"]["method"], "held_out");
  EXPECT_EQ(j["samples"].size(), 72u);
  EXPECT_EQ(j["extrapolation"].size(), 2u);
  EXPECT_EQ(j["extrapolation"][1]["net"], "nvlink-eth");
  EXPECT_EQ(j["extrapolation"][0]["rows"].size(), 8u);
  EXPECT_EQ(j["fit"]["phases"].size(), size_t(kMoePhases));
}

}  // namespace
}  // namespace moe
