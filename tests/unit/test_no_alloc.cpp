// Owns the NoAlloc.* tests: no heap allocation inside Trainer::step after the first steps (operator new and malloc counted).
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <execinfo.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <fstream>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "config/config.h"
#include "train/trainer.h"

// ---- the counting hooks: every C++ allocation and every malloc-family call of the process (libraries too). ----
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocs{0};
// The GEMM libraries allocate their own packing buffers inside some calls: OpenBLAS's AVX-512 small-matrix kernels
// (SkylakeX/Cooperlake core types; none with the Haswell core type) and oneDNN's gemm_bf16bf16f32 (every call).
// Those are the libraries' (their C GEMM APIs take no workspace), so they are counted apart and reported; so are
// the dynamic loader's lazy thread-local blocks (a worker thread touching a library's thread_local data for the
// first time, which depends on how the OpenMP runtime hands out work, not on this project's code).
std::atomic<long> g_blas_allocs{0};
bool from_gemm_library(void* caller) {
  Dl_info info;
  return caller && dladdr(caller, &info) && info.dli_fname &&
         (std::strstr(info.dli_fname, "libopenblas") || std::strstr(info.dli_fname, "libdnnl") ||
          std::strstr(info.dli_fname, "ld-linux"));
}
// The call stacks of the first counted allocations are kept (no allocation needed to keep them) and printed when
// a test fails; MOE_NOALLOC_TRACE=N prints the first N as they happen (to find them).
long g_trace = -1;
constexpr int kKept = 4, kFrames = 24;
void* g_frames[kKept][kFrames];
int g_nframes[kKept];
thread_local bool t_in_trace = false;
inline void count() {
  if (!g_counting.load(std::memory_order_relaxed)) return;
  const long k = g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (t_in_trace) return;
  t_in_trace = true;
  if (k < kKept) g_nframes[k] = backtrace(g_frames[k], kFrames);
  if (k < g_trace) {
    void* frames[kFrames];
    const int n = backtrace(frames, kFrames);
    static const char sep[] = "---- counted allocation\n";
    (void)!write(2, sep, sizeof(sep) - 1);
    backtrace_symbols_fd(frames, n, 2);
  }
  t_in_trace = false;
}
void print_kept_stacks(long n) {
  for (long k = 0; k < n && k < kKept; ++k) {
    std::fprintf(stderr, "---- counted allocation %ld (symbolize with addr2line -f -C -e <test binary> <+offset>)\n", k);
    backtrace_symbols_fd(g_frames[k], g_nframes[k], 2);
  }
}
}  // namespace

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
// Counts one malloc-family call made from `caller` (library allocations apart).
static void count_c(void* caller) {
  if (g_counting.load(std::memory_order_relaxed) && from_gemm_library(caller))
    g_blas_allocs.fetch_add(1, std::memory_order_relaxed);
  else
    count();
}
void* malloc(size_t n) {
  count_c(__builtin_return_address(0));
  return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
  count_c(__builtin_return_address(0));
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
  count_c(__builtin_return_address(0));
  return __libc_realloc(p, n);
}
void* aligned_alloc(size_t al, size_t n) {
  count_c(__builtin_return_address(0));
  return __libc_memalign(al, n);
}
void* memalign(size_t al, size_t n) {
  count_c(__builtin_return_address(0));
  return __libc_memalign(al, n);
}
int posix_memalign(void** out, size_t al, size_t n) {
  count_c(__builtin_return_address(0));
  *out = __libc_memalign(al, n);
  return *out || n == 0 ? 0 : ENOMEM;
}
}

void* operator new(size_t n) {
  count();
  if (void* p = __libc_malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new(size_t n, std::align_val_t al) {
  count();
  if (void* p = __libc_memalign(size_t(al), n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n, std::align_val_t al) { return operator new(n, al); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  count();
  return __libc_malloc(n ? n : 1);
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  count();
  return __libc_malloc(n ? n : 1);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }

namespace moe {
namespace {

constexpr int kVocab = 64, kL = 16;

const std::string& token_path() {
  static const std::string p = [] {
    std::mt19937_64 g(5);
    // One file per process: ctest runs each test of this binary as its own process, side by side.
    const std::string path = ::testing::TempDir() + "moe_noalloc_tokens_" + std::to_string(::getpid()) + ".bin";
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    for (int i = 0; i < kL * 64 + 1; ++i) {
      const uint32_t x = uint32_t(g() % kVocab);
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

Config make_config(const std::vector<std::string>& extra) {
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
  micro_batch: 2
  grad_accum: 2
  steps: 8
  lr: 3.0e-3
  warmup_steps: 1
  seed: 5
data:
  format: tokens
)";
  std::vector<std::string> ov = {"data.path=" + token_path()};
  ov.insert(ov.end(), extra.begin(), extra.end());
  return parse_config(yaml, ov, "noalloc.yaml");
}

Communicator& self_comm() {
  static const std::unique_ptr<Communicator> c = make_self_communicator();
  return *c;
}

// Heap allocations made by Trainer::step over steps 2..N (step 1 may still fault in library pools).
long allocs_in_steps(const std::vector<std::string>& extra) {
  if (g_trace < 0) {
    const char* t = std::getenv("MOE_NOALLOC_TRACE");
    g_trace = t ? std::atol(t) : 0;
    void* f[2];
    backtrace(f, 2);  // loads libgcc's unwinder now, not inside a counted window
  }
  Trainer tr(make_config(extra), self_comm());
  tr.step(0);
  g_allocs = 0;
  g_blas_allocs = 0;
  g_counting = true;
  for (int s = 1; s < 6; ++s) tr.step(s);
  g_counting = false;
  if (g_blas_allocs > 0)
    std::printf("note: %ld allocations inside the GEMM libraries or the loader (OpenBLAS / oneDNN / TLS; not counted)\n",
                g_blas_allocs.load());
  return g_allocs.load();
}

TEST(NoAlloc, HooksCount) {
  // The hooks must see what they are meant to see, or a zero below proves nothing.
  g_allocs = 0;
  g_counting = true;
  std::vector<int>* v = new std::vector<int>(100);
  void* m = std::malloc(64);
  g_counting = false;
  std::free(m);
  delete v;
  EXPECT_GE(g_allocs.load(), 3);
}

struct Case {
  const char* name;
  std::vector<std::string> extra;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class NoAllocSteps : public ::testing::TestWithParam<Case> {};

TEST_P(NoAllocSteps, StepsTwoToNAllocateNothing) {
  const long n = allocs_in_steps(GetParam().extra);
  EXPECT_EQ(n, 0) << GetParam().name;
  if (n > 0) print_kept_stacks(n);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, NoAllocSteps,
    ::testing::Values(Case{"zero0", {}}, Case{"zero2", {"parallel.zero=2"}}, Case{"zero3", {"parallel.zero=3"}},
                      Case{"recompute_selective", {"train.recompute=selective"}},
                      Case{"recompute_full_zero3", {"train.recompute=full", "parallel.zero=3"}},
                      Case{"capacity_jitter_dropout", {"moe.capacity_factor=1.25", "moe.router_jitter=0.1",
                                                       "moe.expert_dropout=0.1", "moe.z_loss_coef=0.001"}},
                      Case{"aux_global", {"moe.aux_loss_scope=global"}},
                      Case{"bf16_zero0", {"train.precision=bf16"}},
                      Case{"bf16_zero3_recompute", {"train.precision=bf16", "parallel.zero=3", "train.recompute=selective"}}),
    [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace moe
