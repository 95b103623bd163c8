// Owns gpu-alltoall: the achieved NCCL bandwidth of the MoE token exchange (EpExchange on the NCCL Communicator, what AllToAllDispatcher calls) against a plain grouped ncclSend/ncclRecv all-to-all of equal bytes.
//
// Run: mpirun -np G gpu-alltoall [--tokens 1024,4096,16384] [--hidden 4096] [--experts 8] [--topk 2] [--iters 20]
//                                [--warmup 5] [--reps 3]
// One process per GPU (make_mpi_world bootstraps, make_nccl_world carries the rows, local rank → GPU). Without a
// launcher, with one rank, or with fewer GPUs on this node than ranks it prints that it needs ≥ 2 GPUs (one rank
// each: NCCL refuses two ranks on one GPU) and exits 0; without a GPU it exits 77.
// Shapes are Mixtral-8x7B's MoE layer: hidden 4096 in bf16, 8 experts top-2, split evenly over the ranks
// (expert parallelism = G). Every rank routes P = T·K rows (T tokens per rank, dropless) grouped by expert:
//   uniform: P/E rows per expert;
//   skewed:  expert 0 gets 4× the rows of each other expert (4/11 of P at E = 8), on every rank — the hot expert's
//            rank then receives more bytes than it sends.
// Per token count and routing, each timed as --reps alternating blocks of --iters calls after --warmup calls, the
// mean time per call taken on the slowest rank (all ranks start each block after an MPI barrier):
//   plain   nccl-tests style all-to-all: one ncclGroupStart/End of ncclSend + ncclRecv to every rank (itself
//           included) with EQUAL chunks of S/G bytes, S = P·H·2 (this rank's dispatch bytes), on a communicator
//           of its own, queued back to back and timed with CUDA events on its stream;
//   plain-v the same grouped send/recv with the dispatch's own per-peer byte counts (skewed only; uniform: = plain)
//           — what the skewed pattern costs by itself, apart from our code;
//   dispatch EpExchange<bf16>::to_experts (rows → their experts' ranks, received in place): our NCCL
//           Communicator's all_to_all_v, a blocking call (its stream waits on the compute stream's event, the host
//           waits for the collective), so it is timed on the host clock around the calls — the host wait is part
//           of what the training step pays;
//   combine EpExchange<bf16>::from_experts (the way back, same bytes).
//   plan    EpExchange::plan (the counts all-gather over MPI and the layout), host clock; printed, not a ratio.
// Bandwidths as nccl-tests define them for all-to-all: algbw = S / t (GB/s, 10⁹ B), busbw = algbw · (G−1)/G,
// with S the bytes one rank sends (own chunk included). ratio = plain-v time / dispatch time (= busbw ratio at
// equal bytes); uniform routing has equal chunks, so there plain-v is plain. The target is ratio ≥ 0.85 for every
// configuration (ROW verdict: the worst). "vs equal" = plain time / dispatch time adds the skew's own cost.
// Prints ROW|nccl_dispatch_a2a|verdict|figure for tests/gpu/device_check.sh (rank 0).
// It includes nccl.h itself for the plain baseline; the library's NCCL stays in comm/nccl_comm.cpp.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "comm/communicator.h"
#include "core/bf16.h"
#include "launch/launch_env.h"
#include "moe/ep_exchange.h"

using namespace moe;

namespace {

constexpr double kTarget = 0.85;
enum class Routing { Uniform, Skewed };
const char* routing_name(Routing r) { return r == Routing::Uniform ? "uniform" : "skewed"; }

struct Options {
  std::vector<i64> tokens = {1024, 4096, 16384};
  i64 H = 4096, E = 8, K = 2;
  int iters = 20, warmup = 5, reps = 3;
};

// Rows per global expert [E] out of P = T·K rows: weights 1 (uniform) or 4, 1, 1, … (skewed); floor shares, the
// remainder one row each from expert 0 on.
std::vector<i64> expert_counts(i64 P, i64 E, Routing r) {
  std::vector<i64> w(static_cast<size_t>(E), 1);
  if (r == Routing::Skewed) w[0] = 4;
  i64 sum = 0;
  for (i64 v : w) sum += v;
  std::vector<i64> c(static_cast<size_t>(E));
  i64 given = 0;
  for (i64 e = 0; e < E; ++e) given += c[size_t(e)] = P * w[size_t(e)] / sum;
  for (i64 e = 0; given < P; e = (e + 1) % E, ++given) ++c[size_t(e)];
  return c;
}

// One grouped all-to-all-v in bytes on a plain NCCL communicator (queued on s, not waited for).
void plain_alltoallv(ncclComm_t comm, cudaStream_t s, int G, const char* send, const std::vector<i64>& sc,
                     const std::vector<i64>& sd, char* recv, const std::vector<i64>& rc, const std::vector<i64>& rd) {
  MT_NCCL(ncclGroupStart());
  for (int p = 0; p < G; ++p) {
    if (sc[size_t(p)] > 0) MT_NCCL(ncclSend(send + sd[size_t(p)], size_t(sc[size_t(p)]), ncclUint8, p, comm, s));
    if (rc[size_t(p)] > 0) MT_NCCL(ncclRecv(recv + rd[size_t(p)], size_t(rc[size_t(p)]), ncclUint8, p, comm, s));
  }
  MT_NCCL(ncclGroupEnd());
}

// Mean milliseconds per call of `n` back-to-back calls queued on s, CUDA events around them.
template <typename F>
double time_events_ms(F fn, int n, cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1) {
  MT_CUDA(cudaEventRecord(e0, s));
  for (int i = 0; i < n; ++i) fn();
  MT_CUDA(cudaEventRecord(e1, s));
  MT_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  MT_CUDA(cudaEventElapsedTime(&ms, e0, e1));
  return double(ms) / n;
}

// Mean milliseconds per call of `n` blocking calls, host clock.
template <typename F>
double time_host_ms(F fn, int n) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / n;
}

// The largest value over the ranks.
double max_over(Communicator& world, double v) {
  std::vector<double> all(static_cast<size_t>(world.size()));
  world.all_gather(all.data(), &v, 1, CommDtype::F64);
  return *std::max_element(all.begin(), all.end());
}

std::vector<i64> parse_list(const char* s) {
  std::vector<i64> v;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    const long long x = std::strtoll(p, &end, 10);
    if (end == p || x <= 0) return {};
    v.push_back(x);
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return {};
  }
  return v;
}

struct DevBuf {
  void* p = nullptr;
  explicit DevBuf(i64 bytes) { MT_CUDA(cudaMalloc(&p, size_t(std::max<i64>(bytes, 1)))); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  char* c() const { return static_cast<char*>(p); }
  bf16* b() const { return static_cast<bf16*>(p); }
};

struct Result {
  i64 T;
  Routing routing;
  double plain, plain_v, dispatch, combine, plan;  // ms per call, slowest rank
};

int run(Communicator& world, int local_rank, const Options& o) {
  const int G = world.size(), me = world.rank();
  auto nccl = make_nccl_world(world, local_rank);  // sets this rank's GPU
  cudaStream_t compute = nullptr, s = nullptr;
  MT_CUDA(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  MT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  nccl->set_compute_stream(compute);
  // The baseline's own communicator: a plain blocking NCCL communicator, id over MPI.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (me == 0) MT_NCCL(ncclGetUniqueId(&id));
  world.broadcast(&id, i64(sizeof id), CommDtype::U8, 0);
  ncclComm_t raw = nullptr;
  MT_NCCL(ncclCommInitRank(&raw, G, id, me));
  cudaEvent_t e0, e1;
  MT_CUDA(cudaEventCreate(&e0));
  MT_CUDA(cudaEventCreate(&e1));
  int dev = 0;
  MT_CUDA(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  MT_CUDA(cudaGetDeviceProperties(&prop, dev));

  const i64 E_local = o.E / G, row_bytes = o.H * i64(sizeof(bf16));
  if (me == 0) {
    std::printf("gpu-alltoall: %d ranks, one %s each; MoE exchange H %lld bf16, %lld experts top-%lld, %lld per rank; "
                "mean per call of %d×%d calls after %d warm-up, slowest rank\n",
                G, prop.name, (long long)o.H, (long long)o.E, (long long)o.K, (long long)E_local, o.reps, o.iters,
                o.warmup);
    std::printf("%7s %-8s %10s | %-26s | %-15s | %-33s | %-15s | %8s\n", "tokens", "routing", "MiB/rank",
                "plain (equal) ms algbw busbw", "plain-v ms busbw", "dispatch ms algbw busbw ratio(vs eq)",
                "combine ms ratio", "plan ms");
  }
  std::vector<Result> results;
  for (i64 T : o.tokens) {
    for (Routing routing : {Routing::Uniform, Routing::Skewed}) {
      const i64 P = T * o.K;
      const std::vector<i64> counts = expert_counts(P, o.E, routing);
      EpExchange<bf16> ex(nccl.get(), o.E, E_local, i64(G) * P, o.H, "", &world);
      const double plan_ms = time_host_ms([&] { ex.plan(counts); }, 5);
      const i64 R = ex.recv_rows();
      // Byte layouts: the dispatch's per-peer rows (identical counts on every rank: each source sends the rows of
      // q's experts to q, and q receives that many from every source), and equal chunks of S/G.
      const size_t g = static_cast<size_t>(G);
      std::vector<i64> sc(g), sd(g), rc(g), rd(g), ec(g), ed(g);
      i64 soff = 0, roff = 0, rows_from_each = 0;
      for (i64 j = 0; j < E_local; ++j) rows_from_each += counts[size_t(me * E_local + j)];
      for (int q = 0; q < G; ++q) {
        i64 rows_to_q = 0;
        for (i64 j = 0; j < E_local; ++j) rows_to_q += counts[size_t(q * E_local + j)];
        const i64 rows_from_q = rows_from_each;
        sc[size_t(q)] = rows_to_q * row_bytes, sd[size_t(q)] = soff, soff += sc[size_t(q)];
        rc[size_t(q)] = rows_from_q * row_bytes, rd[size_t(q)] = roff, roff += rc[size_t(q)];
      }
      MT_CHECK(roff == R * row_bytes && soff == P * row_bytes, "byte layout disagrees with EpExchange::plan");
      const i64 S = P * row_bytes, chunk = S / G;
      for (int q = 0; q < G; ++q) ec[size_t(q)] = chunk, ed[size_t(q)] = q * chunk;
      DevBuf send(S), recv(std::max(R * row_bytes, S)), back(S);
      MT_CUDA(cudaMemset(send.p, me + 1, size_t(S)));
      MT_CUDA(cudaDeviceSynchronize());

      // Sanity: the dispatch delivers each source's bytes at its offset (source-major layout).
      ex.to_experts(recv.b(), send.b(), o.H);
      for (int q = 0; q < G; ++q) {
        if (rc[size_t(q)] == 0) continue;
        unsigned char first = 0, last = 0;
        MT_CUDA(cudaMemcpy(&first, recv.c() + rd[size_t(q)], 1, cudaMemcpyDeviceToHost));
        MT_CUDA(cudaMemcpy(&last, recv.c() + rd[size_t(q)] + rc[size_t(q)] - 1, 1, cudaMemcpyDeviceToHost));
        MT_CHECK(first == (unsigned char)(q + 1) && last == (unsigned char)(q + 1), "rank ", me, ": rows from rank ",
                 q, " did not arrive where EpExchange's layout says");
      }

      auto plain = [&] { plain_alltoallv(raw, s, G, send.c(), ec, ed, recv.c(), ec, ed); };
      auto plain_v = [&] { plain_alltoallv(raw, s, G, send.c(), sc, sd, recv.c(), rc, rd); };
      auto dispatch = [&] { ex.to_experts(recv.b(), send.b(), o.H); };
      auto combine = [&] { ex.from_experts(back.b(), recv.b(), o.H); };
      for (int i = 0; i < o.warmup; ++i) plain(), plain_v(), dispatch(), combine();
      MT_CUDA(cudaStreamSynchronize(s));
      double t_plain = 0, t_plain_v = 0, t_disp = 0, t_comb = 0;
      const bool same = routing == Routing::Uniform && sc == ec && rc == ec;
      for (int r = 0; r < o.reps; ++r) {
        world.barrier();
        t_plain += time_events_ms(plain, o.iters, s, e0, e1);
        if (!same) {
          world.barrier();
          t_plain_v += time_events_ms(plain_v, o.iters, s, e0, e1);
        }
        world.barrier();
        t_disp += time_host_ms(dispatch, o.iters);
        world.barrier();
        t_comb += time_host_ms(combine, o.iters);
      }
      Result res{T, routing, max_over(world, t_plain / o.reps), 0, max_over(world, t_disp / o.reps),
                 max_over(world, t_comb / o.reps), max_over(world, plan_ms)};
      res.plain_v = same ? res.plain : max_over(world, t_plain_v / o.reps);
      results.push_back(res);
      if (me == 0) {
        const double S_gb = double(S) / 1e9, bus = double(G - 1) / G;
        auto algbw = [&](double ms) { return S_gb / (ms * 1e-3); };
        char v[64] = "  (= plain)";
        if (!same) std::snprintf(v, sizeof v, "%7.3f %7.1f", res.plain_v, algbw(res.plain_v) * bus);
        std::printf("%7lld %-8s %10.1f | %8.3f %8.1f %8.1f | %-15s | %7.3f %7.1f %7.1f %4.2f(%4.2f) | %7.3f %7.2f | %8.3f\n",
                    (long long)T, routing_name(routing), double(S) / (1 << 20), res.plain, algbw(res.plain),
                    algbw(res.plain) * bus, v, res.dispatch, algbw(res.dispatch), algbw(res.dispatch) * bus,
                    res.plain_v / res.dispatch, res.plain / res.dispatch, res.combine, res.plain_v / res.combine,
                    res.plan);
      }
      world.barrier();
    }
  }

  if (me == 0) {
    const Result* worst = nullptr;
    for (const auto& r : results)
      if (!worst || r.plain_v / r.dispatch < worst->plain_v / worst->dispatch) worst = &r;
    const double bus = double(G - 1) / G;
    std::string fig;
    char buf[200];
    for (const auto& r : results) {
      if (r.routing != Routing::Uniform) continue;
      const double S_gb = double(r.T * o.K * o.H * i64(sizeof(bf16))) / 1e9;
      std::snprintf(buf, sizeof buf, "%sT %lld: %.0f vs %.0f GB/s busbw = %.2f", fig.empty() ? "" : "; ",
                    (long long)r.T, S_gb / (r.dispatch * 1e-3) * bus, S_gb / (r.plain * 1e-3) * bus,
                    r.plain / r.dispatch);
      fig += buf;
    }
    const double w = worst->plain_v / worst->dispatch;
    std::snprintf(buf, sizeof buf, "; worst %.2f (T %lld %s)", w, (long long)worst->T, routing_name(worst->routing));
    fig += buf;
    std::string verdict = "pass";
    if (w < kTarget) {
      std::snprintf(buf, sizeof buf, "fail: ratio %.2f below the %.2f target", w, kTarget);
      verdict = buf;
    }
    std::printf("ROW|nccl_dispatch_a2a|%s|%d GPUs, H %lld bf16 top-%lld/%lld, busbw dispatch vs plain: %s\n",
                verdict.c_str(), G, (long long)o.H, (long long)o.K, (long long)o.E, fig.c_str());
  }
  std::fflush(stdout);
  ncclCommDestroy(raw);
  nccl.reset();
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(s);
  cudaStreamDestroy(compute);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const char* usage = "usage: gpu-alltoall [--tokens T1,T2,...] [--hidden H] [--experts E] [--topk K] [--iters N] "
                      "[--warmup N] [--reps N]   (one process per GPU: mpirun -np G gpu-alltoall)\n";
  if (argc % 2 == 0) {
    std::fprintf(stderr, "gpu-alltoall: every option takes a value\n%s", usage);
    return 2;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    const char* k = argv[i];
    const long long v = std::atoll(argv[i + 1]);
    if (!std::strcmp(k, "--tokens")) o.tokens = parse_list(argv[i + 1]);
    else if (!std::strcmp(k, "--hidden")) o.H = v;
    else if (!std::strcmp(k, "--experts")) o.E = v;
    else if (!std::strcmp(k, "--topk")) o.K = v;
    else if (!std::strcmp(k, "--iters")) o.iters = int(v);
    else if (!std::strcmp(k, "--warmup")) o.warmup = int(v);
    else if (!std::strcmp(k, "--reps")) o.reps = int(v);
    else {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
  }
  if (o.tokens.empty() || o.H <= 0 || o.E <= 0 || o.K <= 0 || o.K > o.E || o.iters <= 0 || o.warmup < 0 ||
      o.reps <= 0) {
    std::fprintf(stderr, "gpu-alltoall: bad option value\n%s", usage);
    return 2;
  }
  const LaunchEnv env = detect_launch_env();
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (env.rank == 0) std::printf("ROW|nccl_dispatch_a2a|skip: no GPU|\n");
    return 77;
  }
  // Decided from the launcher's environment before MPI starts, identically on every rank of a node.
  const int ranks = env.launcher == Launcher::None ? 1 : env.world;
  const int local = env.launcher == Launcher::None ? 1 : env.local_size;
  if (ranks < 2 || local > devices) {
    if (env.rank == 0) {
      if (devices < 2)
        std::printf("gpu-alltoall needs ≥ 2 GPUs (one rank per GPU: NCCL refuses two ranks on one GPU); this node "
                    "has %d\nROW|nccl_dispatch_a2a|skip: needs ≥ 2 GPUs (this machine has %d)|\n", devices, devices);
      else if (ranks < 2)
        std::printf("gpu-alltoall needs ≥ 2 ranks, one per GPU: mpirun -np %d %s\nROW|nccl_dispatch_a2a|skip: needs "
                    "≥ 2 GPUs, one rank each (run under mpirun -np %d)|\n", devices, argv[0], devices);
      else
        std::printf("gpu-alltoall: %d ranks on this node but %d GPUs (NCCL refuses two ranks on one GPU)\n"
                    "ROW|nccl_dispatch_a2a|skip: needs ≥ 2 GPUs, one rank each (%d ranks, %d GPUs)|\n",
                    local, devices, local, devices);
    }
    return 0;
  }
  if (o.E % ranks != 0) {
    if (env.rank == 0)
      std::printf("ROW|nccl_dispatch_a2a|skip: %lld experts do not split evenly over %d ranks|\n", (long long)o.E,
                  ranks);
    return 0;
  }
  std::unique_ptr<Communicator> world;
  try {
    world = make_mpi_world();
    const int rc = run(*world, env.local_rank, o);
    world.reset();
    finalize_mpi();
    return rc;
  } catch (const std::exception& e) {
    std::string why = e.what();
    std::printf("error: rank %d: %s\n", env.rank, why.c_str());
    why = why.substr(0, why.find('\n'));
    for (char& c : why) c = c == '|' ? '/' : c;
    if (env.rank == 0) std::printf("ROW|nccl_dispatch_a2a|fail: %s|\n", why.c_str());
    std::fflush(stdout);
    abort_world(1);
  }
}
