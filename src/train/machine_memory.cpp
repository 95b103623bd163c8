// Owns reading /proc/meminfo, the cgroup memory limit and the CUDA driver's device memory for the memory check.
#include "train/machine_memory.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace moe {

// A file holding one number ("max" or garbage → -1).
static i64 read_number(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s)) return -1;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  return (end && *end == '\0' && v >= 0) ? i64(v) : -1;
}

// The cgroup v2 path of this process ("0::/path"), "" when not on cgroup v2.
static std::string cgroup2_path() {
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  return "";
}

HostMemory host_memory() {
  HostMemory h;
  std::ifstream mi("/proc/meminfo");
  std::string key;
  long long kb = 0;
  std::string unit;
  while (mi >> key >> kb) {
    std::getline(mi, unit);
    if (key == "MemAvailable:") {
      h.available = i64(kb) * 1024;
      h.source = "MemAvailable in /proc/meminfo";
      break;
    }
  }
  // cgroup limits (a container or a Slurm job step with memory enforcement) may be lower than the machine's.
  auto consider = [&](i64 limit, i64 usage, const std::string& what) {
    if (limit <= 0 || limit >= (i64(1) << 60)) return;  // "max" / unlimited
    const i64 left = std::max<i64>(0, limit - std::max<i64>(0, usage));
    if (h.available < 0 || left < h.available) {
      h.available = left;
      h.source = what;
    }
  };
  const std::string v2 = cgroup2_path();
  for (const std::string& dir : {std::string("/sys/fs/cgroup") + v2, std::string("/sys/fs/cgroup")})
    consider(read_number(dir + "/memory.max"), read_number(dir + "/memory.current"), "cgroup memory.max (" + dir + ")");
  consider(read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
           read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes"), "cgroup memory.limit_in_bytes");
  return h;
}

// The few CUDA driver entry points the check needs (cuda.h is not required to build this file).
namespace {
using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
struct Driver {
  void* lib = nullptr;
  CUresult (*init)(unsigned) = nullptr;
  CUresult (*count)(int*) = nullptr;
  CUresult (*get)(CUdevice*, int) = nullptr;
  CUresult (*name)(char*, int, CUdevice) = nullptr;
  CUresult (*total)(size_t*, CUdevice) = nullptr;
  CUresult (*retain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*release)(CUdevice) = nullptr;
  CUresult (*set_current)(CUcontext) = nullptr;
  CUresult (*mem_info)(size_t*, size_t*) = nullptr;
  template <class F>
  bool sym(F& f, const char* n) {
    f = reinterpret_cast<F>(dlsym(lib, n));
    return f != nullptr;
  }
};
}  // namespace

GpuMemory gpu_memory(int local_rank) {
  GpuMemory g;
  Driver d;
  d.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!d.lib) {
    g.unknown_why = "no CUDA driver (libcuda.so.1) on this machine";
    return g;
  }
  if (!d.sym(d.init, "cuInit") || !d.sym(d.count, "cuDeviceGetCount") || !d.sym(d.get, "cuDeviceGet") ||
      !d.sym(d.name, "cuDeviceGetName") || !d.sym(d.total, "cuDeviceTotalMem_v2")) {
    g.unknown_why = "the CUDA driver lacks cuDeviceTotalMem_v2";
    return g;
  }
  int n = 0;
  if (d.init(0) != 0 || d.count(&n) != 0 || n == 0) {
    g.unknown_why = "the CUDA driver sees no GPU on this machine";
    return g;
  }
  g.devices = n;
  CUdevice dev = 0;
  if (d.get(&dev, std::max(0, local_rank) % n) != 0) {
    g.unknown_why = "cuDeviceGet failed";
    return g;
  }
  char buf[256] = {0};
  if (d.name(buf, int(sizeof buf) - 1, dev) == 0) g.name = buf;
  size_t total = 0;
  if (d.total(&total, dev) == 0) g.total = i64(total);
  // Free memory needs a context: the device's primary context, released again.
  CUcontext ctx = nullptr;
  if (d.sym(d.retain, "cuDevicePrimaryCtxRetain") && d.sym(d.release, "cuDevicePrimaryCtxRelease_v2") &&
      d.sym(d.set_current, "cuCtxSetCurrent") && d.sym(d.mem_info, "cuMemGetInfo_v2") && d.retain(&ctx, dev) == 0) {
    size_t free_b = 0, total_b = 0;
    if (d.set_current(ctx) == 0 && d.mem_info(&free_b, &total_b) == 0) g.free = i64(free_b);
    d.set_current(nullptr);
    d.release(dev);
  }
  if (g.total < 0) g.unknown_why = "cuDeviceTotalMem_v2 failed";
  return g;
}

}  // namespace moe
