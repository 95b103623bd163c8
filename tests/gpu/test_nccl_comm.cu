// Owns the NCCL communicator check: every collective against host-computed values (one rank on one GPU; with
// several GPUs, one rank per GPU under mpirun), ordering after the compute stream, split, and the timeout path (a
// collective stuck behind the compute stream aborts with a message naming it). Exits 77 without a GPU.
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/bf16.h"
#include "core/error.h"
#include "launch/launch_env.h"

using namespace moe;

namespace {
int failures = 0;
int g_rank = 0;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      ++failures;                                          \
      std::printf("[rank %d] FAIL %s: ", g_rank, #cond);   \
      std::printf(__VA_ARGS__);                            \
      std::printf("\n");                                   \
    }                                                      \
  } while (0)

template <typename T>
T* dev(size_t n) {
  T* d = nullptr;
  if (cudaMalloc(&d, n * sizeof(T) + 8) != cudaSuccess) std::abort();
  cudaMemset(d, 0, n * sizeof(T) + 8);
  cudaDeviceSynchronize();  // the collectives run on other streams: the fill must be done before they start
  return d;
}
template <typename T>
void put(T* d, const std::vector<T>& h) {
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaDeviceSynchronize();  // a pageable copy may return before its DMA lands; other streams read d next
}
template <typename T>
std::vector<T> get(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

__device__ unsigned long long globaltimer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// Waits `ns` on the GPU, then writes x[i] = value: work the collective must be ordered after.
__global__ void late_fill(float* x, int n, float value, unsigned long long ns) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    const unsigned long long t0 = globaltimer_ns();
    while (globaltimer_ns() - t0 < ns) __nanosleep(1000);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = value;
}

// Count rank s sends to rank d in the all-to-all test (zero for some pairs).
long long a2a_count(int s, int d) { return (s * 7 + d * 3) % 4 + (s == d ? 2 : 0); }

void check_collectives(Communicator& c, cudaStream_t compute) {
  const int W = c.size(), r = c.rank();
  CHECK(c.buffer_space() == MemSpace::Cuda, "NCCL buffers live on the GPU");
  const size_t n = 1003;
  // all_reduce_sum, three dtypes.
  {
    float* f = dev<float>(n);
    double* d = dev<double>(n);
    int64_t* l = dev<int64_t>(n);
    std::vector<float> hf(n);
    std::vector<double> hd(n);
    std::vector<int64_t> hl(n);
    for (size_t i = 0; i < n; ++i) {
      hf[i] = float(r + 1) + float(i);
      hd[i] = 0.5 * (r + 1) + double(i);
      hl[i] = (int64_t(1) << 40) * (r + 1) + int64_t(i);
    }
    put(f, hf);
    put(d, hd);
    put(l, hl);
    c.all_reduce_sum(f, i64(n), CommDtype::F32);
    c.all_reduce_sum(d, i64(n));
    c.all_reduce_sum(l, i64(n));
    const auto gf = get(f, n);
    const auto gd = get(d, n);
    const auto gl = get(l, n);
    const double tri = W * (W + 1) / 2.0;
    for (size_t i = 0; i < n; ++i) {
      CHECK(gf[i] == float(tri + W * double(i)), "all_reduce F32 [%zu] = %g", i, gf[i]);
      CHECK(gd[i] == 0.5 * tri + W * double(i), "all_reduce F64 [%zu] = %g", i, gd[i]);
      CHECK(gl[i] == (int64_t(1) << 40) * int64_t(tri) + W * int64_t(i), "all_reduce I64 [%zu]", i);
      if (failures > 20) break;
    }
    // Two requests in flight, waited in reverse order.
    put(f, hf);
    put(d, hd);
    CommRequest q1, q2;
    c.iall_reduce_sum(f, i64(n), CommDtype::F32, q1);
    c.iall_reduce_sum(d, i64(n), CommDtype::F64, q2);
    c.wait(q2);
    c.wait(q1);
    c.wait(q1);  // idle: returns at once
    CHECK(!q1.pending && !q2.pending, "requests done after wait");
    CHECK(get(f, n)[7] == float(tri + 7 * W) && get(d, n)[9] == 0.5 * tri + 9 * W, "iall_reduce_sum values");
    // BF16 sums are refused before anything is queued (the same on every rank).
    bool refused = false;
    try {
      c.all_reduce_sum(f, 4, CommDtype::BF16);
    } catch (const Error&) {
      refused = true;
    }
    CHECK(refused, "BF16 sum refused");
    cudaFree(f);
    cudaFree(d);
    cudaFree(l);
  }
  // reduce_scatter_sum, out of place and in place.
  {
    const size_t m = 257;
    float* send = dev<float>(m * W);
    float* recv = dev<float>(m);
    std::vector<float> hs(m * W);
    for (int ch = 0; ch < W; ++ch)
      for (size_t i = 0; i < m; ++i) hs[size_t(ch) * m + i] = float((r + 1) * (ch + 1)) + float(i);
    put(send, hs);
    c.reduce_scatter_sum(recv, send, i64(m), CommDtype::F32);
    const auto g = get(recv, m);
    const double tri = W * (W + 1) / 2.0;
    for (size_t i = 0; i < m; ++i)
      CHECK(g[i] == float(tri * (r + 1) + W * double(i)), "reduce_scatter [%zu] = %g", i, g[i]);
    put(send, hs);
    c.reduce_scatter_sum(send + size_t(r) * m, send, i64(m), CommDtype::F32);
    const auto gi = get(send + size_t(r) * m, m);
    for (size_t i = 0; i < m; ++i) CHECK(gi[i] == g[i], "in-place reduce_scatter [%zu] = %g", i, gi[i]);
    // Non-blocking (ZeRO 2-3 overlap): out of place and in place in flight together, waited in reverse order.
    float* send2 = dev<float>(m * W);
    put(send, hs);
    put(send2, hs);
    CommRequest qa, qb;
    c.ireduce_scatter_sum(recv, send, i64(m), CommDtype::F32, qa);
    c.ireduce_scatter_sum(send2 + size_t(r) * m, send2, i64(m), CommDtype::F32, qb);
    c.wait(qb);
    c.wait(qa);
    const auto ga = get(recv, m), gb = get(send2 + size_t(r) * m, m);
    for (size_t i = 0; i < m; ++i) {
      CHECK(ga[i] == g[i], "ireduce_scatter [%zu] = %g", i, ga[i]);
      CHECK(gb[i] == g[i], "in-place ireduce_scatter [%zu] = %g", i, gb[i]);
    }
    cudaFree(send2);
    cudaFree(send);
    cudaFree(recv);
  }
  // all_gather (F32 blocking, BF16 non-blocking: bits moved as they are).
  {
    const size_t m = 129;
    float* send = dev<float>(m);
    float* recv = dev<float>(m * W);
    std::vector<float> hs(m);
    for (size_t i = 0; i < m; ++i) hs[i] = float(r * 1000 + int(i));
    put(send, hs);
    c.all_gather(recv, send, i64(m), CommDtype::F32);
    const auto g = get(recv, m * W);
    for (int q = 0; q < W; ++q)
      for (size_t i = 0; i < m; ++i)
        CHECK(g[size_t(q) * m + i] == float(q * 1000 + int(i)), "all_gather chunk %d [%zu] = %g", q, i,
              g[size_t(q) * m + i]);
    bf16* bs = dev<bf16>(m);
    bf16* br = dev<bf16>(m * W);
    std::vector<bf16> hb(m);
    for (size_t i = 0; i < m; ++i) hb[i] = bf16::from_bits(uint16_t(0x3f00 + r * 256 + int(i)));
    put(bs, hb);
    CommRequest q;
    c.iall_gather(br, bs, i64(m), CommDtype::BF16, q);
    c.wait(q);
    const auto gb = get(br, m * W);
    for (int p = 0; p < W; ++p)
      for (size_t i = 0; i < m; ++i)
        CHECK(gb[size_t(p) * m + i].bits == uint16_t(0x3f00 + p * 256 + int(i)), "bf16 all_gather %d [%zu]", p, i);
    cudaFree(send);
    cudaFree(recv);
    cudaFree(bs);
    cudaFree(br);
  }
  // all_to_all_v with uneven (some zero) counts and gaps between the blocks.
  {
    std::vector<i64> sc(W), sd(W), rc(W), rd(W);
    i64 so = 0, ro = 0;
    for (int p = 0; p < W; ++p) {
      sc[size_t(p)] = a2a_count(r, p);
      sd[size_t(p)] = so;
      so += sc[size_t(p)] + 1;
      rc[size_t(p)] = a2a_count(p, r);
      rd[size_t(p)] = ro;
      ro += rc[size_t(p)] + 2;
    }
    std::vector<float> hs(size_t(so), -1.f);
    for (int p = 0; p < W; ++p)
      for (i64 j = 0; j < sc[size_t(p)]; ++j) hs[size_t(sd[size_t(p)] + j)] = float(r * 10000 + p * 100 + int(j));
    float* send = dev<float>(size_t(so));
    float* recv = dev<float>(size_t(ro));
    put(send, hs);
    c.all_to_all_v(send, sc.data(), sd.data(), recv, rc.data(), rd.data(), CommDtype::F32);
    const auto g = get(recv, size_t(ro));
    for (int p = 0; p < W; ++p) {
      for (i64 j = 0; j < rc[size_t(p)]; ++j)
        CHECK(g[size_t(rd[size_t(p)] + j)] == float(p * 10000 + r * 100 + int(j)), "all_to_all_v from %d [%lld] = %g",
              p, (long long)j, g[size_t(rd[size_t(p)] + j)]);
      CHECK(g[size_t(rd[size_t(p)] + rc[size_t(p)])] == 0.f, "all_to_all_v wrote past block from %d", p);
    }
    cudaFree(send);
    cudaFree(recv);
  }
  // broadcast from the last rank, barrier.
  {
    double* b = dev<double>(5);
    put(b, std::vector<double>(5, double(r) + 0.25));
    c.broadcast(b, 5, CommDtype::F64, W - 1);
    const auto g = get(b, 5);
    for (int i = 0; i < 5; ++i) CHECK(g[size_t(i)] == double(W - 1) + 0.25, "broadcast [%d] = %g", i, g[size_t(i)]);
    c.barrier();
    cudaFree(b);
  }
  // Ordering: a kernel still running on the compute stream when the call is made is finished before the
  // collective reads the buffer.
  {
    c.set_compute_stream(compute);
    float* x = dev<float>(n);
    late_fill<<<1, 256, 0, compute>>>(x, int(n), float(r + 1), 50ull * 1000 * 1000);
    c.all_reduce_sum(x, i64(n), CommDtype::F32);
    const auto g = get(x, n);
    CHECK(g[0] == float(W * (W + 1) / 2) && g[n - 1] == float(W * (W + 1) / 2),
          "all_reduce after a late compute kernel: %g (expected %d)", g[0], W * (W + 1) / 2);
    cudaFree(x);
  }
  // split: even/odd ranks, ordered by descending world rank.
  {
    auto sub = c.split(r % 2, W - r);
    int members = 0, before = 0;
    float expect = 0;
    for (int q = 0; q < W; ++q)
      if (q % 2 == r % 2) {
        ++members;
        expect += float(q + 1);
        if (q > r) ++before;
      }
    CHECK(sub->size() == members && sub->rank() == before, "split: size %d rank %d (expected %d, %d)", sub->size(),
          sub->rank(), members, before);
    float* x = dev<float>(3);
    put(x, std::vector<float>(3, float(r + 1)));
    sub->all_reduce_sum(x, 3, CommDtype::F32);
    CHECK(get(x, 3)[2] == expect, "split all_reduce %g (expected %g)", get(x, 3)[2], expect);
    cudaFree(x);
  }
}

// Child of the timeout check: a one-rank world whose collective waits behind a compute kernel that outlasts the
// timeout (bounded at 20 s so the GPU is freed); the communicator must abort the process naming all_reduce_sum.
int hang_case() {
  auto boot = make_self_communicator();
  auto c = make_nccl_world(*boot, 0);
  cudaStream_t compute;
  cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking);
  c->set_compute_stream(compute);
  float* x = dev<float>(4);
  late_fill<<<1, 32, 0, compute>>>(x, 4, 1.f, 20ull * 1000 * 1000 * 1000);
  c->all_reduce_sum(x, 4, CommDtype::F32);
  std::printf("hang case: all_reduce_sum returned instead of timing out\n");
  return 0;
}

int run_status(const std::string& cmd, std::string* out) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, k);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

std::string self_exe() {
  char buf[4096];
  const ssize_t k = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return k > 0 ? std::string(buf, size_t(k)) : std::string();
}

int run_world(Communicator& boot, int local_rank) {
  g_rank = boot.rank();
  auto c = make_nccl_world(boot, local_rank);
  cudaStream_t compute;
  cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking);
  check_collectives(*c, compute);
  std::vector<double> f = {double(failures)};
  boot.all_reduce_sum(f.data(), 1);
  if (boot.rank() == 0)
    std::printf("nccl communicator, %d rank(s): %s\n", c->size(), f[0] == 0 ? "all collectives ok" : "FAILED");
  c.reset();
  cudaStreamDestroy(compute);
  return f[0] == 0 ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipping NCCL communicator test\n");
    return 77;
  }
  try {
    if (argc > 1 && std::string(argv[1]) == "--hang") return hang_case();
    const LaunchEnv env = detect_launch_env();
    if (env.launcher != Launcher::None) {  // one rank of an mpirun/srun world
      auto boot = make_mpi_world();
      const int rc = run_world(*boot, env.local_rank);
      boot.reset();
      finalize_mpi();
      return rc;
    }
    int rc = 0;
    if (devices > 1 && std::system("command -v mpirun >/dev/null 2>&1") == 0) {
      // One process per GPU under mpirun.
      std::string out;
      const std::string cmd = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun -np " +
                              std::to_string(devices) + " --oversubscribe --bind-to none " + self_exe() + " 2>&1";
      rc = run_status(cmd, &out);
      std::printf("%s", out.c_str());
      if (rc != 0) std::printf("FAIL: %d-rank run exited %d\n", devices, rc);
    } else {
      auto boot = make_self_communicator();
      rc = run_world(*boot, 0);
    }
    // Timeout path, in a child: exit non-zero within the timeout (plus start-up), message naming the collective.
    std::string out;
    const auto t0 = std::chrono::steady_clock::now();
    const int hc = run_status("MOE_NCCL_TIMEOUT_S=3 " + self_exe() + " --hang 2>&1", &out);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool ok = hc != 0 && hc != 77 && out.find("all_reduce_sum") != std::string::npos &&
                    out.find("timed out") != std::string::npos && secs < 60;
    std::printf("timeout path: exit %d after %.1f s: %s\n%s", hc, secs, ok ? "ok" : "FAILED", ok ? "" : out.c_str());
    return rc == 0 && ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
}
