// Owns moe-bench: per-phase timing of one MoE layer forward under expert parallelism (DESIGN §3 apps, flow of §4) and the dispatch all-to-all vs a plain all_to_all_v of the same byte counts.
//
// Run: mpirun -np R moe-bench --tokens 1024,4096 --hidden 512 --ffn 1024 --experts 8 --topk 1,2
//        --capacity 0,1.0,1.25 --iters 20 --warmup 3 --csv moe_bench.csv
// The EP group is the whole world (E must divide by R). T = tokens per rank (one micro-batch, C4.capacity).
// Each phase is timed separately; the communication phases start after a barrier so that their time is the
// exchange itself, not waiting for a slower rank. Reported time = median over iterations, then max over ranks.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "config/config.h"
#include "core/arena.h"
#include "core/error.h"
#include "core/rng.h"
#include "moe/ep_exchange.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "moe/plan.h"
#include "moe/router.h"
#include "train/runtime.h"

using namespace moe;
using clk = std::chrono::steady_clock;

namespace {

struct BenchArgs {
  std::vector<i64> tokens{1024};
  i64 H = 512, I = 1024, E = 8;
  std::vector<i64> topk{1, 2};
  std::vector<double> capacity{0.0, 1.0, 1.25};
  DropPolicy drop = DropPolicy::Probs;
  int iters = 20, warmup = 3;
  int a2a_reps = 3;  // rounds of dispatch/plain/direct exchanges per iteration
  uint64_t seed = 1234;
  std::string csv;
  bool csv_append = false, layer = true;
};

// Timed phases, in forward order; then the reference exchanges and MoeLayer::forward end to end.
// Plain = one bare all_to_all_v with the dispatch's per-peer counts (src-major result, no permutation).
// Direct = E_local all_to_all_v calls, one per local expert, each received in place in expert-major order: what
//          to_experts would cost without its staging copy (a design probe, not a library path).
enum Phase { Route, PlanP, Permute, Counts, Dispatch, Experts, Return, Combine, Plain, Direct, Layer, kPhases };
const char* const kPhaseName[kPhases] = {"route",      "plan",    "permute",   "counts",     "a2a_dispatch", "experts",
                                         "a2a_return", "combine", "a2a_plain", "a2a_direct", "layer"};

// One configuration's result, already reduced over ranks.
struct Row {
  int ep = 1;
  i64 T = 0, K = 0;
  double cf = 0;
  i64 capacity = -1;
  double ms[kPhases] = {};   // median over iterations, max over ranks
  double total = 0;          // Σ of the forward phases (route..combine)
  i64 pairs = 0, kept = 0;   // Σ over ranks
  i64 recv_rows_max = 0;     // most rows any rank's experts processed
  i64 bytes = 0;             // dispatch bytes Σ over ranks (all rows, own rank's included)
  i64 remote_bytes = 0;      // the part that crosses ranks
  double layer_diff = 0;     // max |pieces − MoeLayer| over ranks (must be 0)
  // Fastest sample of each exchange (min over samples, max over ranks): preemption by other processes only adds
  // time, so on a shared machine the ratio of minima is the steadier estimate of what the code can do.
  double best_dispatch = 0, best_plain = 0, best_direct = 0;
};

// Bandwidth ratio ours/plain = plain time / our time (the same bytes move in both).
double ratio(const Row& r) { return r.ms[Dispatch] > 0 ? r.ms[Plain] / r.ms[Dispatch] : 0.0; }
double ratio_best(const Row& r) { return r.best_dispatch > 0 ? r.best_plain / r.best_dispatch : 0.0; }
double ratio_direct(const Row& r) { return r.ms[Direct] > 0 ? r.ms[Plain] / r.ms[Direct] : 0.0; }
double ratio_direct_best(const Row& r) { return r.best_direct > 0 ? r.best_plain / r.best_direct : 0.0; }

double ms_since(clk::time_point t0) { return std::chrono::duration<double, std::milli>(clk::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Max over ranks of n doubles (all_gather, then max per entry).
void all_max(Communicator& c, double* v, i64 n) {
  std::vector<double> all(size_t(n * c.size()));
  c.all_gather(all.data(), v, n, CommDtype::F64);
  for (i64 i = 0; i < n; ++i)
    for (int r = 0; r < c.size(); ++r) v[i] = std::max(v[i], all[size_t(r * n + i)]);
}

// Random weights, keyed by (seed, tensor, global expert) so every EP layout draws the same experts.
struct BenchWeights {
  std::vector<float> Wg;          // [E, H] router
  std::vector<float> w1, w3, w2;  // [E_local, I, H] ×2, [E_local, H, I]
  ExpertWeights<float> view;
};

void fill_normal(float* p, i64 n, double scale, const Philox& ph, uint32_t tensor, uint32_t index) {
  for (i64 i = 0; i < n; ++i) p[i] = float(scale * ph.normal(uint64_t(i), tensor, index));
}

BenchWeights make_weights(const BenchArgs& a, int first, int E_local) {
  const Philox ph(a.seed, RngPurpose::Init);
  BenchWeights w;
  const i64 H = a.H, I = a.I;
  w.Wg.resize(size_t(a.E * H));
  fill_normal(w.Wg.data(), a.E * H, 1.0 / std::sqrt(double(H)), ph, 1, 0);  // logits ~ N(0, 1)
  w.w1.resize(size_t(E_local * I * H));
  w.w3.resize(w.w1.size());
  w.w2.resize(w.w1.size());
  for (int j = 0; j < E_local; ++j) {
    const uint32_t e = uint32_t(first + j);
    fill_normal(w.w1.data() + j * I * H, I * H, 1.0 / std::sqrt(double(H)), ph, 2, e);
    fill_normal(w.w3.data() + j * I * H, I * H, 1.0 / std::sqrt(double(H)), ph, 3, e);
    fill_normal(w.w2.data() + j * H * I, H * I, 1.0 / std::sqrt(double(I)), ph, 4, e);
    w.view.w1.push_back(w.w1.data() + j * I * H);
    w.view.w3.push_back(w.w3.data() + j * I * H);
    w.view.w2.push_back(w.w2.data() + j * H * I);
  }
  return w;
}

// Times one (T, K, capacity factor) configuration. Collective over `world` (= the EP group).
Row run_config(Communicator& world, const BenchArgs& a, const BenchWeights& w, i64 T, i64 K, double cf) {
  const int ep = world.size(), rank = world.rank();
  const i64 H = a.H, I = a.I, E = a.E, E_local = E / ep, TK = T * K;
  const i64 R_max = i64(ep) * TK;  // dropless worst case (max_expert_rows with the default bound)
  const RouterDims d{T, H, E, K};

  // Inputs: token rows keyed by the global token index rank·T + t (seeded, never by rank alone).
  std::vector<float> x(size_t(T * H));  // [T, H]
  {
    const Philox ph(a.seed, RngPurpose::Init);
    for (i64 i = 0; i < T * H; ++i) x[size_t(i)] = float(ph.normal(uint64_t(rank * T * H + i), 5, uint32_t(T)));
  }
  std::vector<float> logits(size_t(T * E)), probs(size_t(T * E));  // [T, E]
  std::vector<float> topk_w(static_cast<size_t>(TK));              // [T, K]
  std::vector<float> xg(size_t(TK * H)), y(size_t(TK * H));         // [T·K, H] local row order
  std::vector<float> xe(size_t(R_max * H)), ye(size_t(R_max * H));  // [R, H] expert-major
  std::vector<float> plain_recv(size_t(R_max * H));                 // [R, H] src-major, reference exchange
  std::vector<float> direct_recv(size_t(R_max * H));                // [R, H] expert-major, in-place probe
  std::vector<float> act_a(size_t(R_max * I)), act_b(act_a.size()), act_h(act_a.size());  // [R, I]
  std::vector<float> out(size_t(T * H)), out_layer(size_t(T * H));  // [T, H]
  ExpertMlpActs<float> acts{act_a.data(), act_b.data(), act_h.data()};
  RoutingPlan plan(T, E, K);
  EpExchange<float> ex(&world, E, E_local, R_max, H);
  // Element counts/displacements of the plain all_to_all_v: the same bytes per peer as the dispatch.
  std::vector<i64> sc(ep), sd(ep), rc(ep), rd(ep);
  // The direct probe's layout: call j sends rows of expert q·E_local + j to peer q and receives block (j, s) at its
  // expert-major offset. [E_local · ep] each, call-major.
  std::vector<i64> dsc(size_t(E_local * ep)), dsd(dsc.size()), drc(dsc.size()), drd(dsc.size());

  MoeConfig cfg;
  cfg.capacity_factor = cf;
  cfg.drop_policy = a.drop;
  Arena arena;
  ExpertShardSpec shard{&world, ep, int(rank * E_local), int(E_local)};
  const auto moe_ops = make_cpu_moe_ops<float>();
  MoeScratch<float> ms{};
  MoeLayer<float> layer(*moe_ops, T, H, E, K, I, cfg, TopkNorm::Renormalize, shard, ms, arena);
  MoeScratch<float>::reserve(ms, arena, T, H, E, K, I, cfg, shard);
  arena.allocate();

  std::vector<std::vector<double>> t(kPhases);
  for (auto& v : t) v.reserve(size_t(a.iters * a.a2a_reps));
  i64 remote_elems = 0;
  for (int it = 0; it < a.warmup + a.iters; ++it) {
    const bool rec = it >= a.warmup;
    auto record = [&](Phase p, clk::time_point t0) {
      const double ms = ms_since(t0);
      if (rec) t[p].push_back(ms);
    };
    world.barrier();
    auto t0 = clk::now();
    router_forward<float>(logits.data(), probs.data(), plan.topk_idx.data(), topk_w.data(), x.data(), w.Wg.data(),
                          nullptr, d, 1.0, TopkNorm::Renormalize);
    record(Route, t0);
    t0 = clk::now();
    build_plan<float>(plan, probs.data(), cf, a.drop);
    record(PlanP, t0);
    t0 = clk::now();
    dispatch_gather<float>(xg.data(), x.data(), plan, H);
    record(Permute, t0);
    world.barrier();
    t0 = clk::now();
    ex.plan(plan.counts);
    record(Counts, t0);

    // Plain layout from public state: rows to peer q = its experts' counts; from src s = Σ_j block (j, s).
    const std::vector<RowBlock>& blocks = ex.row_blocks();  // [E_local · ep] expert-major list
    i64 so = 0, ro = 0;
    remote_elems = 0;
    for (int q = 0; q < ep; ++q) {
      i64 s_rows = 0, r_rows = 0;
      for (i64 j = 0; j < E_local; ++j) {
        s_rows += plan.counts[size_t(q * E_local + j)];
        r_rows += blocks[size_t(j * ep + q)].rows;
      }
      sc[q] = s_rows * H, sd[q] = so, rc[q] = r_rows * H, rd[q] = ro;
      so += sc[q], ro += rc[q];
      if (q != rank) remote_elems += sc[q];
    }
    MT_CHECK(ro == ex.recv_rows() * H, "plain receive layout ", ro, " != exchange rows·H ", ex.recv_rows() * H);
    for (i64 j = 0, em = 0; j < E_local; ++j)
      for (int q = 0; q < ep; ++q) {
        const size_t c = size_t(j * ep + q);
        dsc[c] = plan.counts[size_t(q * E_local + j)] * H;
        dsd[c] = plan.offsets[size_t(q * E_local + j)] * H;
        drc[c] = blocks[c].rows * H;  // block (expert j, source q)
        drd[c] = em * H;
        em += blocks[c].rows;
      }
    auto direct = [&] {
      world.barrier();
      const auto p0 = clk::now();
      for (i64 j = 0; j < E_local; ++j) {
        const size_t c = size_t(j * ep);
        world.all_to_all_v(xg.data(), &dsc[c], &dsd[c], direct_recv.data(), &drc[c], &drd[c], CommDtype::F32);
      }
      record(Direct, p0);
    };
    auto plain = [&] {
      world.barrier();
      const auto p0 = clk::now();
      world.all_to_all_v(xg.data(), sc.data(), sd.data(), plain_recv.data(), rc.data(), rd.data(), CommDtype::F32);
      record(Plain, p0);
    };
    auto dispatch = [&] {
      world.barrier();
      const auto p0 = clk::now();
      ex.to_experts(xe.data(), xg.data(), H);
      record(Dispatch, p0);
    };
    // a2a_reps interleaved rounds of the three exchanges (each is idempotent); the order rotates so none always
    // finds the send rows warm in cache. Many short samples keep the medians robust to a preempted rank.
    for (int rep = 0; rep < a.a2a_reps; ++rep) {
      const int first = (it + rep) % 3;
      for (int k = 0; k < 3; ++k) {
        const int v = (first + k) % 3;
        v == 0 ? dispatch() : v == 1 ? plain() : direct();
      }
    }

    t0 = clk::now();
    expert_mlp_forward<float>(ye.data(), acts, xe.data(), nullptr, ex.row_blocks(), w.view, H, I);
    record(Experts, t0);
    world.barrier();
    t0 = clk::now();
    ex.from_experts(y.data(), ye.data(), H);
    record(Return, t0);
    t0 = clk::now();
    combine_forward<float>(out.data(), y.data(), topk_w.data(), plan, H);
    record(Combine, t0);

    if (a.layer) {
      world.barrier();
      t0 = clk::now();
      layer.forward(out_layer.data(), x.data(), w.Wg.data(), w.view, nullptr, RngCtx{a.seed, 0, 0, 0}, Mode::Eval);
      record(Layer, t0);
    }
  }

  Row row;
  row.ep = ep, row.T = T, row.K = K, row.cf = cf, row.capacity = plan.capacity;
  for (int p = 0; p < kPhases; ++p) row.ms[p] = median(t[p]);
  // The plain exchange moved the same rows into the same (source-major) places as the dispatch; the direct
  // probe holds them expert-major: block (j, s) of the dispatch buffer must equal its expert-major slot.
  double plain_diff = 0;
  for (i64 i = 0; i < ex.recv_rows() * H; ++i)
    plain_diff = std::max(plain_diff, double(std::fabs(plain_recv[size_t(i)] - xe[size_t(i)])));
  {
    i64 dst = 0;
    for (const RowBlock& b : ex.row_blocks()) {
      for (i64 i = 0; i < b.rows * H; ++i)
        plain_diff = std::max(plain_diff, double(std::fabs(direct_recv[size_t(dst * H + i)] - xe[size_t(b.row * H + i)])));
      dst += b.rows;
    }
  }
  // Validate-then-bench: the pieces must reproduce MoeLayer::forward bit for bit.
  if (a.layer)
    for (i64 i = 0; i < T * H; ++i)
      row.layer_diff = std::max(row.layer_diff, double(std::fabs(out[size_t(i)] - out_layer[size_t(i)])));
  double red[kPhases + 6];
  std::copy(row.ms, row.ms + kPhases, red);
  red[kPhases] = row.layer_diff;
  red[kPhases + 1] = double(ex.recv_rows());
  red[kPhases + 2] = *std::min_element(t[Dispatch].begin(), t[Dispatch].end());
  red[kPhases + 3] = *std::min_element(t[Plain].begin(), t[Plain].end());
  red[kPhases + 4] = plain_diff;
  red[kPhases + 5] = *std::min_element(t[Direct].begin(), t[Direct].end());
  all_max(world, red, kPhases + 6);
  MT_CHECK(red[kPhases + 4] == 0, "the reference exchanges and the dispatch moved different rows (max diff ",
           red[kPhases + 4], ")");
  std::copy(red, red + kPhases, row.ms);
  row.layer_diff = red[kPhases];
  row.recv_rows_max = i64(red[kPhases + 1]);
  row.best_dispatch = red[kPhases + 2];
  row.best_plain = red[kPhases + 3];
  row.best_direct = red[kPhases + 5];
  int64_t sums[4] = {TK, plan.P, plan.P * H * i64(sizeof(float)), remote_elems * i64(sizeof(float))};
  world.all_reduce_sum(sums, 4);
  row.pairs = sums[0], row.kept = sums[1], row.bytes = sums[2], row.remote_bytes = sums[3];
  for (int p = Route; p <= Combine; ++p) row.total += row.ms[p];
  return row;
}

double gbps(i64 bytes, double ms) { return ms > 0 ? double(bytes) / (ms * 1e6) : 0.0; }

void print_header(const BenchArgs& a, int ep) {
  std::printf("moe-bench: ep=%d  H=%lld I=%lld E=%lld (%lld local experts/rank)  drop=%s  iters=%d warmup=%d "
              "a2a-reps=%d\n",
              ep, (long long)a.H, (long long)a.I, (long long)a.E, (long long)(a.E / ep),
              a.drop == DropPolicy::Probs ? "probs" : "position", a.iters, a.warmup, a.a2a_reps);
  std::printf("times in ms (median over iters, max over ranks); T = tokens per rank; ovh = share of the forward that "
              "is not expert compute;\na2a GB/s = dispatch bytes (all ranks) / median time; "
              "ratio = ours/plain bandwidth from medians, best = from the fastest samples;\n"
              "direct, dbest = the same for the in-place probe "
              "(one all_to_all_v per local expert, no staging copy)\n");
  std::printf("%6s %2s %5s %6s %5s | %7s %7s %7s %7s %7s %8s %7s %7s | %8s %8s %5s | %7s %7s %6s %6s | %6s %6s\n", "T",
              "k", "cf", "C", "drop%", "route", "plan", "permute", "counts", "a2a->", "experts", "a2a<-", "combine",
              "total", "layer", "ovh%", "ours", "plain", "ratio", "best", "direct", "dbest");
}

void print_row(const Row& r) {
  const double drop = r.pairs ? 100.0 * double(r.pairs - r.kept) / double(r.pairs) : 0.0;
  const double ovh = r.total > 0 ? 100.0 * (r.total - r.ms[Experts]) / r.total : 0.0;
  const double ours = gbps(r.bytes, r.ms[Dispatch]), plain = gbps(r.bytes, r.ms[Plain]);
  std::printf("%6lld %2lld %5.2f %6lld %5.1f | %7.3f %7.3f %7.3f %7.3f %7.3f %8.3f %7.3f %7.3f | %8.3f %8.3f %5.1f | "
              "%7.2f %7.2f %6.3f %6.3f | %6.3f %6.3f%s\n",
              (long long)r.T, (long long)r.K, r.cf, (long long)r.capacity, drop, r.ms[Route], r.ms[PlanP],
              r.ms[Permute], r.ms[Counts], r.ms[Dispatch], r.ms[Experts], r.ms[Return], r.ms[Combine], r.total,
              r.ms[Layer], ovh, ours, plain, ratio(r), ratio_best(r), ratio_direct(r), ratio_direct_best(r),
              r.layer_diff > 0 ? "  (MoeLayer output differs!)" : "");
  std::fflush(stdout);
}

void write_csv(const std::string& path, bool append, const BenchArgs& a, const std::vector<Row>& rows) {
  std::FILE* f = std::fopen(path.c_str(), append ? "a" : "w");
  MT_INPUT_CHECK(f, "--csv: cannot open ", path, " for writing; check the directory exists and is writable");
  std::fseek(f, 0, SEEK_END);
  if (std::ftell(f) == 0) {
    std::fprintf(f, "ep,tokens,hidden,ffn,experts,topk,capacity_factor,capacity,pairs,kept,recv_rows_max");
    for (const char* n : kPhaseName) std::fprintf(f, ",%s_ms", n);
    std::fprintf(f, ",total_ms,overhead_pct,dispatch_bytes,remote_bytes,ours_gbps,plain_gbps,ratio,best_dispatch_ms,"
                    "best_plain_ms,ratio_best,best_direct_ms,ratio_direct,ratio_direct_best,layer_maxdiff\n");
  }
  for (const Row& r : rows) {
    std::fprintf(f, "%d,%lld,%lld,%lld,%lld,%lld,%g,%lld,%lld,%lld,%lld", r.ep, (long long)r.T, (long long)a.H,
                 (long long)a.I, (long long)a.E, (long long)r.K, r.cf, (long long)r.capacity, (long long)r.pairs,
                 (long long)r.kept, (long long)r.recv_rows_max);
    for (double ms : r.ms) std::fprintf(f, ",%.4f", ms);
    std::fprintf(f, ",%.4f,%.2f,%lld,%lld,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%g\n", r.total,
                 r.total > 0 ? 100.0 * (r.total - r.ms[Experts]) / r.total : 0.0, (long long)r.bytes,
                 (long long)r.remote_bytes, gbps(r.bytes, r.ms[Dispatch]), gbps(r.bytes, r.ms[Plain]),
                 ratio(r), r.best_dispatch, r.best_plain, ratio_best(r), r.best_direct, ratio_direct(r),
                 ratio_direct_best(r), r.layer_diff);
  }
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe-bench: per-phase timing of one MoE layer forward under expert parallelism (run under mpirun)"};
  BenchArgs a;
  std::string drop = "probs";
  bool no_layer = false;
  app.add_option("--tokens", a.tokens, "tokens per rank (one micro-batch), comma list")->delimiter(',');
  app.add_option("--hidden", a.H, "hidden size H")->check(CLI::PositiveNumber);
  app.add_option("--ffn", a.I, "expert intermediate size I")->check(CLI::PositiveNumber);
  app.add_option("--experts", a.E, "experts E (split evenly over all ranks)")->check(CLI::PositiveNumber);
  app.add_option("--topk", a.topk, "top-k values, comma list")->delimiter(',');
  app.add_option("--capacity", a.capacity, "capacity factors, comma list (0 = dropless)")->delimiter(',');
  app.add_option("--drop-policy", drop, "probs | position")->check(CLI::IsMember({"probs", "position"}));
  app.add_option("--iters", a.iters, "timed iterations per configuration")->check(CLI::PositiveNumber);
  app.add_option("--warmup", a.warmup, "untimed iterations first")->check(CLI::NonNegativeNumber);
  app.add_option("--a2a-reps", a.a2a_reps, "rounds of the three exchanges (dispatch, plain, direct) per iteration")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", a.seed, "seed of inputs and weights");
  app.add_option("--csv", a.csv, "write one CSV row per configuration to this file (rank 0)");
  app.add_flag("--csv-append", a.csv_append, "append to --csv (header only when the file is empty)");
  app.add_flag("--no-layer", no_layer, "skip the end-to-end MoeLayer::forward timing and check");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  a.drop = drop == "position" ? DropPolicy::Position : DropPolicy::Probs;
  a.layer = !no_layer;
  Runtime rt;
  try {
    rt = start_runtime();
    Communicator& world = *rt.world;
    const int ep = world.size();
    MT_INPUT_CHECK(a.E % ep == 0, "--experts: got ", a.E, " for ", ep, " ranks (the EP group is the whole world); "
                   "allowed: a multiple of ", ep, "; change --experts or mpirun -np");
    for (i64 T : a.tokens) MT_INPUT_CHECK(T > 0, "--tokens: got ", T, "; allowed: positive token counts");
    for (i64 K : a.topk)
      MT_INPUT_CHECK(K >= 1 && K <= a.E, "--topk: got ", K, "; allowed: 1..", a.E, " (the number of experts)");
    for (double c : a.capacity) MT_INPUT_CHECK(c >= 0, "--capacity: got ", c, "; allowed: 0 (dropless) or > 0");
    const i64 E_local = a.E / ep;
    const BenchWeights w = make_weights(a, int(world.rank() * E_local), int(E_local));
    const bool root = world.rank() == 0;
    if (root) print_header(a, ep);
    std::vector<Row> rows;
    for (i64 T : a.tokens)
      for (i64 K : a.topk)
        for (double cf : a.capacity) {
          rows.push_back(run_config(world, a, w, T, K, cf));
          if (root) print_row(rows.back());
        }
    if (root) {
      double lo = 1e30, hi = 0, lo_b = 1e30, hi_b = 0;
      int below = 0, below_b = 0;
      for (const Row& r : rows) {
        lo = std::min(lo, ratio(r)), hi = std::max(hi, ratio(r)), below += ratio(r) < 0.85;
        lo_b = std::min(lo_b, ratio_best(r)), hi_b = std::max(hi_b, ratio_best(r)), below_b += ratio_best(r) < 0.85;
      }
      std::printf("a2a ratio ours/plain (dispatch incl. block permutation vs bare all_to_all_v, same bytes): "
                  "medians: min %.3f max %.3f, %d of %zu below 0.85; fastest samples: min %.3f max %.3f, %d below\n",
                  lo, hi, below, rows.size(), lo_b, hi_b, below_b);
      for (const Row& r : rows)
        if (r.layer_diff > 0) std::printf("WARNING: pieces differ from MoeLayer::forward by %g\n", r.layer_diff);
      if (!a.csv.empty()) write_csv(a.csv, a.csv_append, a, rows);
    }
    stop_runtime(rt);
    return 0;
  } catch (const Error& e) {
    return fail_run(rt, e.what(), e.exit_code());
  } catch (const std::exception& e) {
    return fail_run(rt, (std::string("internal error: ") + e.what()).c_str(), 1);
  }
}
