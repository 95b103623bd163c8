// Owns moe-bench: the routing-overhead study of the real MoE layer — per-phase timing (moe/moe_phase.h) of
// MoeLayer forward + backward under expert parallelism over sweeps of ep, tokens, hidden, ffn, experts, top-k and
// capacity factor; moe_bench.csv / moe_bench.json; then the cost model's fit, held-out error and extrapolation.
//
// Run: mpirun -np 4 moe-bench --ep 1,2,4 --tokens 256,1024 --hidden 256 --ffn 512 --experts 8 --topk 1,2
//        --capacity 0,1.25 --warmup 2 --repeats 10 --out runs/bench
//      moe-bench --tiny --out DIR   (a small sweep, well under a minute on 2 cores under mpirun -np 2)
// The world is split into groups of `ep` consecutive ranks (world % ep == 0); each group runs the same layer on
// its own tokens (the expert-data-parallel replicas). T = tokens per rank and micro-batch (C4.capacity).
// Each repeat times every phase with the layer's own timers (chrono on the CPU, CUDA events on a GPU); an
// all-to-all phase starts after a barrier of its EP group, so it times the exchange, not the wait for a slower
// rank. A repeat's phase time is the max over all ranks; the CSV reports the median and the 10th/90th percentiles
// over repeats.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <unistd.h>
#include <vector>

#include "backend/backend.h"
#include "bench/cost_model.h"
#include "comm/communicator.h"
#include "core/arena.h"
#include "core/error.h"
#include "core/rng.h"
#include "moe/moe_layer.h"
#include "moe/phase_timer.h"
#include "train/model_flops.h"
#include "train/runtime.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

struct BenchArgs {
  std::vector<int> ep;  // empty: 1 and every power of two dividing the world, and the world itself
  // The default sweep varies every size the cost model's phase forms use (96 configurations per ep).
  std::vector<i64> tokens{256, 1024, 4096}, hidden{256, 512}, ffn{512, 1024}, experts{8, 16}, topk{1, 2};
  std::vector<double> capacity{0.0, 1.25};
  DropPolicy drop = DropPolicy::Probs;
  Device device = Device::Cpu;
  int warmup = 2, repeats = 7;
  int held_out_every = 4;  // every Nth configuration (sweep order) is held out of the cost-model fit
  uint64_t seed = 1234;
  std::string out;
  bool tiny = false;
  ScaleTarget target;                                  // the extrapolation's model and cluster (cost_model.h)
  std::vector<std::string> nets{"nvlink-ib", "nvlink-eth"};  // network presets of the extrapolation
  NetLinks custom{"custom", {0, -1}, {0, -1}};            // --intra-*/--inter-*: a custom network, printed first
  double target_peak_tflops = 0;  // > 0: compute_speedup = this / the bench device's measured GEMM peak
};

// One configuration of the sweep.
struct BenchConfig {
  int ep;
  i64 T, H, I, E, K;
  double cf;
};

// One measured configuration, reduced over all ranks.
struct BenchRow {
  BenchConfig c{};
  int repeats = 0;
  std::array<double, kMoePhases> med{}, p10{}, p90{};  // ms
  double fwd_ms = 0, bwd_ms = 0, layer_ms = 0;         // medians of the per-repeat sums
  double overhead_pct = 0;  // 100 · (layer − experts − experts_bwd) / layer
  i64 send_bytes_max = 0, recv_bytes_max = 0, rows_max = 0;
  bool held_out = false;
};

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - double(lo)) * (v[hi] - v[lo]);
}

// Max over ranks of n doubles (all_gather over host memory, then max per entry).
void all_max(Communicator& c, double* v, i64 n) {
  std::vector<double> all(size_t(n * c.size()));
  c.all_gather(all.data(), v, n, CommDtype::F64);
  for (i64 i = 0; i < n; ++i)
    for (int r = 0; r < c.size(); ++r) v[i] = std::max(v[i], all[size_t(r * n + i)]);
}

// Seeded normal values into backend memory: element i of tensor `tensor` (index `index`) is the same draw on every
// layout (keyed by global expert / global token, never by rank alone).
template <typename T>
void fill_normal(MemOps& mem, T* dst, i64 n, double scale, uint64_t seed, uint32_t tensor, uint32_t index,
                 uint64_t first = 0) {
  const Philox ph(seed, RngPurpose::Init);
  std::vector<T> h(static_cast<size_t>(n));
  for (i64 i = 0; i < n; ++i) h[size_t(i)] = T(float(scale * ph.normal(first + uint64_t(i), tensor, index)));
  mem.to_backend(dst, h.data(), n * i64(sizeof(T)));
}

// Times one configuration. Collective over `world`; `ep_host` / `ep_dev` are this rank's EP group over host and
// backend memory (the same communicator on the CPU).
template <typename T>
BenchRow run_config(Communicator& world, Communicator& ep_host, Communicator& ep_dev, Backend<T>& be,
                    const BenchArgs& a, const BenchConfig& c) {
  using A = acc_t<T>;
  const int ep = c.ep, q = ep_host.rank();
  const i64 T_ = c.T, H = c.H, I = c.I, E = c.E, K = c.K, E_local = E / ep;
  MoeConfig cfg;
  cfg.capacity_factor = c.cf;
  cfg.drop_policy = a.drop;
  const ExpertShardSpec shard{&ep_dev, ep, int(q * E_local), int(E_local), &ep_host};
  Arena arena;
  MoeScratch<T> ms{};
  MoeLayer<T> layer(*be.moe, T_, H, E, K, I, cfg, TopkNorm::Renormalize, shard, ms, arena, be.dense.get());
  MoeScratch<T>::reserve(ms, arena, T_, H, E, K, I, cfg, shard);
  Buffer<std::byte> block;
  if (be.space == MemSpace::Host) {
    arena.allocate();
  } else {
    block = Buffer<std::byte>(*be.mem, arena.bytes(), "moe-bench layer arena");
    arena.allocate_in(block.data());
  }
  // Tensors: x, dout [T,H]; router Wg [E,H] (A); local experts w1, w3 [I,H], w2 [H,I] each; their gradients.
  Buffer<T> x(*be.mem, T_ * H, "x"), dout(*be.mem, T_ * H, "dout"), out(*be.mem, T_ * H, "out"),
      dx(*be.mem, T_ * H, "dx"), W(*be.mem, E_local * 3 * I * H, "expert weights");
  Buffer<A> Wg(*be.mem, E * H, "router"), dWg(*be.mem, E * H, "router grad"),
      G(*be.mem, E_local * 3 * I * H, "expert grads");
  const uint64_t token0 = uint64_t(world.rank()) * uint64_t(T_ * H);  // each rank routes its own tokens
  fill_normal(*be.mem, x.data(), T_ * H, 1.0, a.seed, 5, 0, token0);
  fill_normal(*be.mem, dout.data(), T_ * H, 1.0, a.seed, 6, 0, token0);
  fill_normal(*be.mem, Wg.data(), E * H, 1.0 / std::sqrt(double(H)), a.seed, 1, 0);  // logits ~ N(0, 1)
  ExpertWeights<T> w;
  ExpertGrads<T> g;
  for (i64 j = 0; j < E_local; ++j) {
    const uint32_t e = uint32_t(q * E_local + j);
    T* base = W.data() + j * 3 * I * H;
    A* gbase = G.data() + j * 3 * I * H;
    fill_normal(*be.mem, base, I * H, 1.0 / std::sqrt(double(H)), a.seed, 2, e);
    fill_normal(*be.mem, base + I * H, I * H, 1.0 / std::sqrt(double(H)), a.seed, 3, e);
    fill_normal(*be.mem, base + 2 * I * H, H * I, 1.0 / std::sqrt(double(I)), a.seed, 4, e);
    w.w1.push_back(base);
    w.w3.push_back(base + I * H);
    w.w2.push_back(base + 2 * I * H);
    g.w1.push_back(gbase);
    g.w3.push_back(gbase + I * H);
    g.w2.push_back(gbase + 2 * I * H);
  }
  std::vector<double> aux_dp(size_t(E), 0.0);  // no aux-loss gradient: the bench times the layer, not the objective
  Buffer<double> aux_dev;
  const double* aux = aux_dp.data();
  if (be.space != MemSpace::Host) {
    aux_dev = Buffer<double>(*be.mem, E, "aux_dp");
    be.mem->to_backend(aux_dev.data(), aux_dp.data(), E * i64(sizeof(double)));
    aux = aux_dev.data();
  }

  std::unique_ptr<PhaseTimer> timer = make_phase_timer(be.space, be.stream.handle);
  timer->before_a2a = [&ep_host] { ep_host.barrier(); };
  layer.set_phase_timer(timer.get());
  std::array<std::vector<double>, kMoePhases> samples;
  std::vector<double> fwd, bwd, total;
  double rows[3] = {0, 0, 0};  // remote send rows, remote recv rows, rows at the experts (max over ranks below)
  for (int it = 0; it < a.warmup + a.repeats; ++it) {
    world.barrier();
    layer.forward(out.data(), x.data(), Wg.data(), w, nullptr, RngCtx{a.seed, 0, 0, 0}, Mode::Eval);
    layer.backward(dx.data(), dout.data(), Wg.data(), w, dWg.data(), g, aux, 0.0);
    std::array<double, kMoePhases> ms = timer->read_ms();
    all_max(world, ms.data(), kMoePhases);
    if (it < a.warmup) continue;
    double f = 0, b = 0;
    for (int p = 0; p < kMoePhases; ++p) {
      samples[size_t(p)].push_back(ms[size_t(p)]);
      (p < kMoeForwardPhases ? f : b) += ms[size_t(p)];
    }
    fwd.push_back(f);
    bwd.push_back(b);
    total.push_back(f + b);
  }
  rows[0] = double(layer.dispatcher().remote_send_rows());
  rows[1] = double(layer.dispatcher().remote_recv_rows());
  rows[2] = double(layer.dispatcher().recv_rows());
  all_max(world, rows, 3);

  BenchRow r;
  r.c = c;
  r.repeats = a.repeats;
  for (int p = 0; p < kMoePhases; ++p) {
    r.med[size_t(p)] = percentile(samples[size_t(p)], 0.5);
    r.p10[size_t(p)] = percentile(samples[size_t(p)], 0.1);
    r.p90[size_t(p)] = percentile(samples[size_t(p)], 0.9);
  }
  r.fwd_ms = percentile(fwd, 0.5);
  r.bwd_ms = percentile(bwd, 0.5);
  r.layer_ms = percentile(total, 0.5);
  const double expert_ms = r.med[size_t(MoePhase::Experts)] + r.med[size_t(MoePhase::ExpertsBwd)];
  r.overhead_pct = r.layer_ms > 0 ? 100.0 * std::max(0.0, r.layer_ms - expert_ms) / r.layer_ms : 0.0;
  const i64 row_bytes = H * i64(sizeof(T));
  r.send_bytes_max = i64(rows[0]) * row_bytes;
  r.recv_bytes_max = i64(rows[1]) * row_bytes;
  r.rows_max = i64(rows[2]);
  return r;
}

std::vector<BenchConfig> sweep(const BenchArgs& a, int world, std::vector<std::string>& skipped) {
  std::vector<BenchConfig> out;
  for (int ep : a.ep)
    for (i64 E : a.experts)
      for (i64 T : a.tokens)
        for (i64 H : a.hidden)
          for (i64 I : a.ffn)
            for (i64 K : a.topk)
              for (double cf : a.capacity) {
                std::string why;
                if (world % ep != 0)
                  why = "ep " + std::to_string(ep) + ": it must divide the world (" + std::to_string(world) + " ranks)";
                else if (E % ep != 0)
                  why = "ep " + std::to_string(ep) + " x " + std::to_string(E) + " experts: ep must divide the experts";
                else if (K > E)
                  why = "top-k " + std::to_string(K) + " > " + std::to_string(E) + " experts";
                if (!why.empty()) {
                  if (std::find(skipped.begin(), skipped.end(), why) == skipped.end()) skipped.push_back(why);
                  continue;
                }
                out.push_back({ep, T, H, I, E, K, cf});
              }
  return out;
}

void write_csv(const std::string& path, const std::vector<BenchRow>& rows) {
  std::ofstream f(path);
  MT_INPUT_CHECK(f.good(), "--out: cannot write '", path, "'");
  f << "ep,tokens,hidden,ffn,experts,topk,capacity_factor,repeats";
  for (int p = 0; p < kMoePhases; ++p)
    f << ',' << kMoePhaseName[p] << "_ms," << kMoePhaseName[p] << "_p10_ms," << kMoePhaseName[p] << "_p90_ms";
  f << ",fwd_ms,bwd_ms,layer_ms,overhead_pct,a2a_send_bytes_max,a2a_recv_bytes_max,rows_max,held_out\n";
  char buf[64];
  auto num = [&](double v) {
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return std::string(buf);
  };
  for (const BenchRow& r : rows) {
    f << r.c.ep << ',' << r.c.T << ',' << r.c.H << ',' << r.c.I << ',' << r.c.E << ',' << r.c.K << ','
      << num(r.c.cf) << ',' << r.repeats;
    for (int p = 0; p < kMoePhases; ++p)
      f << ',' << num(r.med[size_t(p)]) << ',' << num(r.p10[size_t(p)]) << ',' << num(r.p90[size_t(p)]);
    f << ',' << num(r.fwd_ms) << ',' << num(r.bwd_ms) << ',' << num(r.layer_ms) << ',' << num(r.overhead_pct) << ','
      << r.send_bytes_max << ',' << r.recv_bytes_max << ',' << r.rows_max << ',' << (r.held_out ? 1 : 0) << '\n';
  }
  f.flush();
  MT_INPUT_CHECK(f.good(), "--out: write failed for '", path, "'");
}

nlohmann::json rows_json(const std::vector<BenchRow>& rows) {
  nlohmann::json a = nlohmann::json::array();
  for (const BenchRow& r : rows) {
    nlohmann::json j = {{"ep", r.c.ep},           {"tokens", r.c.T},         {"hidden", r.c.H},
                        {"ffn", r.c.I},           {"experts", r.c.E},        {"topk", r.c.K},
                        {"capacity_factor", r.c.cf}, {"repeats", r.repeats},  {"fwd_ms", r.fwd_ms},
                        {"bwd_ms", r.bwd_ms},     {"layer_ms", r.layer_ms},  {"overhead_pct", r.overhead_pct},
                        {"a2a_send_bytes_max", r.send_bytes_max}, {"a2a_recv_bytes_max", r.recv_bytes_max},
                        {"rows_max", r.rows_max}, {"held_out", r.held_out}};
    for (int p = 0; p < kMoePhases; ++p)
      j["phases_ms"][kMoePhaseName[p]] = {
          {"median", r.med[size_t(p)]}, {"p10", r.p10[size_t(p)]}, {"p90", r.p90[size_t(p)]}};
    a.push_back(j);
  }
  return a;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.flush();
  MT_INPUT_CHECK(f.good(), "--out: cannot write '", path, "'");
}

std::string hostname() {
  char h[256] = {0};
  gethostname(h, sizeof h - 1);
  return h;
}

template <typename T>
std::vector<BenchRow> run_sweep(Communicator& world, Backend<T>& be, const BenchArgs& a,
                                const std::vector<BenchConfig>& configs, int local_rank) {
  std::vector<BenchRow> rows;
  int last_ep = -1;
  std::unique_ptr<Communicator> ep_host, ep_dev_world, ep_dev;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < configs.size(); ++i) {
    const BenchConfig& c = configs[i];
    if (c.ep != last_ep) {  // EP groups of consecutive ranks (and their twin over device memory on a GPU)
      ep_dev.reset();
      ep_host = world.split(world.rank() / c.ep, world.rank());
      if (be.space != MemSpace::Host) {
        if (!ep_dev_world) ep_dev_world = make_nccl_world(world, local_rank);
        ep_dev = ep_dev_world->split(world.rank() / c.ep, world.rank());
      }
      last_ep = c.ep;
    }
    BenchRow r = run_config<T>(world, *ep_host, ep_dev ? *ep_dev : *ep_host, be, a, c);
    r.held_out = a.held_out_every > 1 && int(i % size_t(a.held_out_every)) == a.held_out_every - 1;
    if (world.rank() == 0)
      spdlog::info("[{:>3}/{}] ep {} T {} H {} I {} E {} k {} cf {:g}: layer {:.3f} ms (fwd {:.3f}, bwd {:.3f}), "
                   "routing overhead {:.1f}%, a2a {} B/rank{}",
                   i + 1, configs.size(), c.ep, c.T, c.H, c.I, c.E, c.K, c.cf, r.layer_ms, r.fwd_ms, r.bwd_ms,
                   r.overhead_pct, r.send_bytes_max, r.held_out ? " (held out)" : "");
    rows.push_back(r);
  }
  if (world.rank() == 0)
    spdlog::info("{} configurations in {:.1f} s", configs.size(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return rows;
}

int bench_main(Runtime& rt, const BenchArgs& a) {
  Communicator& world = *rt.world;
  std::vector<std::string> skipped;
  const std::vector<BenchConfig> configs = sweep(a, world.size(), skipped);
  if (world.rank() == 0)
    for (const std::string& s : skipped) spdlog::warn("skipped configurations with {}", s);
  MT_INPUT_CHECK(!configs.empty(), "moe-bench: no configuration of the sweep fits ", world.size(),
                 " rank(s): --ep values must divide the world size and --experts, and --topk be at most --experts");
  if (world.rank() == 0) {  // what the cost model can and cannot learn from this sweep
    auto varied = [&](auto get) {
      for (const BenchConfig& c : configs)
        if (get(c) != get(configs.front())) return true;
      return false;
    };
    std::string fixed;
    if (!varied([](const BenchConfig& c) { return c.T; })) fixed += " --tokens";
    if (!varied([](const BenchConfig& c) { return c.H; })) fixed += " --hidden";
    if (!varied([](const BenchConfig& c) { return c.I; })) fixed += " --ffn";
    if (!varied([](const BenchConfig& c) { return c.E; })) fixed += " --experts";
    if (!varied([](const BenchConfig& c) { return c.K; })) fixed += " --topk";
    if (!fixed.empty())
      spdlog::warn("the sweep keeps{} at one value: the cost model fits the phases that scale with them as "
                   "constants, so extrapolating along them is not measured (give two or more values)", fixed);
    if (std::none_of(configs.begin(), configs.end(), [](const BenchConfig& c) { return c.ep > 1; }))
      spdlog::warn("no configuration with ep > 1: the all-to-all phases are not measured and not fitted (run "
                   "under mpirun with --ep 1,2,...)");
  }
  if (world.rank() == 0) {
    std::error_code ec;
    fs::create_directories(a.out, ec);
    MT_INPUT_CHECK(!ec, "--out: cannot create '", a.out, "': ", ec.message());
  }
  const int local_rank = rt.env.local_rank >= 0 ? rt.env.local_rank : 0;
  std::vector<BenchRow> rows;
  double bench_peak = 0;
  std::string peak_source;
  ScaleTarget target = a.target;
  {
    std::unique_ptr<Backend<float>> be;
    try {
      be = make_backend<float>(a.device, local_rank);
    } catch (const Error& e) {  // the backend speaks of moe-train's key; this tool's flag is --device
      if (e.kind() != ErrorKind::BadInput) throw;
      MT_INPUT_FAIL("--device ", a.device == Device::Cuda ? "cuda" : "cpu", ": ", e.what());
    }
    rows = run_sweep<float>(world, *be, a, configs, local_rank);
    if (a.target_peak_tflops > 0 && world.rank() == 0) {
      Config fp32;  // train.peak_tflops 0: the device's datasheet fp32 peak, or the CPU's GEMM measured now
      bench_peak = resolve_peak_tflops(fp32, *be, &peak_source);
      MT_INPUT_CHECK(bench_peak > 0, "--target-peak-tflops: no peak known for this device (", peak_source, ")");
      target.compute_speedup = a.target_peak_tflops / bench_peak;
    }
  }
  if (world.rank() != 0) return 0;
  if (bench_peak > 0)
    spdlog::info("compute speedup of the target: {:.4g} TFLOP/s / {:.4g} TFLOP/s ({}) = {:.4g}",
                 a.target_peak_tflops, bench_peak, peak_source, target.compute_speedup);

  const std::string csv = (fs::path(a.out) / "moe_bench.csv").string();
  write_csv(csv, rows);
  // The cost model: fit on the measured rows, held-out error, extrapolation (src/bench/cost_model.h).
  std::vector<NetLinks> nets;
  if (a.custom.intra.gbps > 0 || a.custom.inter.gbps > 0 || a.custom.intra.latency_us >= 0 ||
      a.custom.inter.latency_us >= 0) {
    NetLinks c = net_preset(a.nets.empty() ? "nvlink-ib" : a.nets.front());
    c.name = "custom";
    if (a.custom.intra.gbps > 0) c.intra.gbps = a.custom.intra.gbps;
    if (a.custom.intra.latency_us >= 0) c.intra.latency_us = a.custom.intra.latency_us;
    if (a.custom.inter.gbps > 0) c.inter.gbps = a.custom.inter.gbps;
    if (a.custom.inter.latency_us >= 0) c.inter.latency_us = a.custom.inter.latency_us;
    nets.push_back(c);
  }
  for (const std::string& n : a.nets) nets.push_back(net_preset(n));
  CostReport rep = run_cost_model(read_bench_csv(csv), target, nets);
  rep.source = csv;
  std::cout << '\n';
  print_validation(std::cout, rep);
  for (size_t i = 0; i < rep.tables.size(); ++i) {
    std::cout << '\n';
    print_scale_table(std::cout, rep, i);
  }
  std::cout.flush();
  nlohmann::json j;
  j["tool"] = "moe-bench";
  j["host"] = hostname();
  j["world"] = world.size();
  j["device"] = a.device == Device::Cuda ? "cuda" : "cpu";
  j["dtype"] = "fp32";
  j["warmup"] = a.warmup;
  j["repeats"] = a.repeats;
  j["time"] = long(std::time(nullptr));
  j["configs"] = rows_json(rows);
  const nlohmann::json model = cost_report_json(rep);
  write_text((fs::path(a.out) / "moe_bench.json").string(), j.dump(1) + "\n");
  write_text((fs::path(a.out) / "cost_model.json").string(), model.dump(1) + "\n");
  std::string md;
  for (size_t i = 0; i < rep.tables.size(); ++i) md += scale_table_markdown(rep, i) + "\n";
  write_text((fs::path(a.out) / "scaling_table.md").string(), md);
  spdlog::info("wrote {0}/moe_bench.csv, moe_bench.json, cost_model.json, scaling_table.md; plots: "
               "bench/moe_bench_plot.py {0}/moe_bench.csv --model {0}/cost_model.json", a.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  BenchArgs a;
  CLI::App app{"moe-bench: per-phase timing of the MoE layer (forward + backward) under expert parallelism, and a "
               "cost model of routing overhead extrapolated to 8..1024 GPUs"};
  std::string device = "cpu", drop = "probs";
  app.add_option("--ep", a.ep, "expert-parallel sizes to sweep, each dividing the world and --experts (default: 1, "
                              "the powers of two dividing the world, the world)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--tokens", a.tokens, "tokens per rank and micro-batch")
      ->delimiter(',')->check(CLI::Range(1, 1 << 30))->capture_default_str();
  app.add_option("--hidden", a.hidden, "hidden sizes")->delimiter(',')->check(CLI::Range(1, 1 << 30))->capture_default_str();
  app.add_option("--ffn", a.ffn, "expert widths (intermediate size)")
      ->delimiter(',')->check(CLI::Range(1, 1 << 30))->capture_default_str();
  app.add_option("--experts", a.experts, "numbers of experts")
      ->delimiter(',')->check(CLI::Range(1, 1 << 30))->capture_default_str();
  app.add_option("--topk", a.topk, "top-k values")->delimiter(',')->check(CLI::Range(1, 1 << 30))->capture_default_str();
  app.add_option("--capacity", a.capacity, "capacity factors (0 = dropless)")
      ->delimiter(',')->check(CLI::Range(0.0, 1e6))->capture_default_str();
  app.add_option("--drop-policy", drop, "probs|position")->check(CLI::IsMember({"probs", "position"}));
  app.add_option("--device", device, "cpu|cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--warmup", a.warmup, "untimed iterations per configuration")->check(CLI::NonNegativeNumber);
  app.add_option("--repeats", a.repeats, "timed iterations per configuration")->check(CLI::PositiveNumber);
  app.add_option("--held-out-every", a.held_out_every,
                 "every Nth configuration is held out of the cost-model fit and predicted (0 or 1: none)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", a.seed, "seed of the random inputs and weights");
  app.add_option("--out", a.out, "output directory (moe_bench.csv, moe_bench.json, scaling_table.md)")->required();
  app.add_flag("--tiny", a.tiny, "a small sweep for CI: ep 1 and the world size, T 64..256, H 64/128, E 4");
  app.add_option("--target-hidden", a.target.hidden, "extrapolated model: hidden size (default Mixtral 8x7B 4096)")
      ->check(CLI::PositiveNumber);
  app.add_option("--target-ffn", a.target.ffn, "extrapolated model: expert width (14336)")->check(CLI::PositiveNumber);
  app.add_option("--target-experts", a.target.experts, "extrapolated model: experts (8)")->check(CLI::PositiveNumber);
  app.add_option("--target-topk", a.target.topk, "extrapolated model: top-k (2)")->check(CLI::PositiveNumber);
  app.add_option("--target-tokens", a.target.tokens, "extrapolated model: tokens per GPU and micro-batch (4096)")
      ->check(CLI::PositiveNumber);
  app.add_option("--target-capacity", a.target.capacity_factor, "extrapolated model: capacity factor (1.25)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--target-elem-bytes", a.target.elem_bytes, "bytes per moved element on the target (4 fp32, 2 bf16)")
      ->check(CLI::PositiveNumber);
  CLI::Option* speedup = app.add_option("--compute-speedup", a.target.compute_speedup,
                 "target device's compute speed over this machine's (divides the fitted compute phases)")
      ->check(CLI::PositiveNumber);
  app.add_option("--target-peak-tflops", a.target_peak_tflops,
                 "target device's dense peak (e.g. 989 for H100 bf16): sets the compute speedup to it over this "
                 "device's measured fp32 GEMM peak")
      ->check(CLI::PositiveNumber)
      ->excludes(speedup);
  app.add_option("--net", a.nets, "network presets of the extrapolation: nvlink-ib (NVLink 450 GB/s + InfiniBand NDR "
                                 "50 GB/s per GPU), nvlink-eth (NVLink + 100G Ethernet)")
      ->delimiter(',')
      ->check(CLI::IsMember({"nvlink-ib", "nvlink-eth"}));
  app.add_option("--intra-gbps", a.custom.intra.gbps, "custom network: intra-node GB/s per GPU")
      ->check(CLI::PositiveNumber);
  app.add_option("--intra-us", a.custom.intra.latency_us, "custom network: intra-node latency per message, us")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--inter-gbps", a.custom.inter.gbps, "custom network: inter-node GB/s per GPU")
      ->check(CLI::PositiveNumber);
  app.add_option("--inter-us", a.custom.inter.latency_us, "custom network: inter-node latency per message, us")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--gpus-per-node", a.target.gpus_per_node, "GPUs per node (8)")->check(CLI::PositiveNumber);
  app.add_option("--max-gpus", a.target.max_gpus, "largest GPU count of the extrapolation (powers of two from 8)")
      ->check(CLI::Range(8, 1 << 20));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {  // bad usage is bad input: exit 2 (0 for --help)
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  a.device = device == "cuda" ? Device::Cuda : Device::Cpu;
  a.drop = drop == "position" ? DropPolicy::Position : DropPolicy::Probs;

  Runtime rt = start_runtime();
  if (a.ep.empty()) {
    const int w = rt.world->size();
    a.ep = {1};
    for (int e = 2; e <= w; e *= 2)
      if (w % e == 0) a.ep.push_back(e);
    if (a.ep.back() != w) a.ep.push_back(w);
  }
  if (a.tiny) {
    const int w = rt.world->size();
    a.ep = w > 1 ? std::vector<int>{1, w} : std::vector<int>{1};
    a.tokens = {64, 128, 256};
    a.hidden = {64, 128};
    a.ffn = {128};
    a.experts = {4};
    a.topk = {1, 2};
    a.capacity = {0.0, 1.25};
    a.warmup = std::min(a.warmup, 1);
    a.repeats = std::min(a.repeats, 5);
  }
  int rc = 0;
  try {
    run_agreed(*rt.world, [] {});
    rc = bench_main(rt, a);
  } catch (const Error& e) {
    rc = fail_run(rt, e.what(), e.exit_code());
  } catch (const std::exception& e) {
    rc = fail_run(rt, e.what(), 1);
  }
  stop_runtime(rt);
  return rc;
}
