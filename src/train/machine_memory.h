// Owns what this machine can hold: available host memory (MemAvailable, cgroup limit) and GPU memory (CUDA driver, loaded at run time).
#pragma once
#include <string>

#include "core/dims.h"

namespace moe {

struct HostMemory {
  i64 available = -1;   // bytes this process can still allocate without swapping; -1 = unknown
  std::string source;   // "MemAvailable", "cgroup memory limit", ...
};

// min(/proc/meminfo MemAvailable, cgroup limit − cgroup usage) (cgroup v2 memory.max or v1 limit_in_bytes).
HostMemory host_memory();

struct GpuMemory {
  int devices = 0;
  std::string name;      // e.g. "NVIDIA H200"
  i64 free = -1, total = -1;  // bytes of the chosen device; -1 = unknown
  std::string unknown_why;    // why free/total are unknown ("no CUDA driver on this machine", ...)
};

// Device `local_rank mod devices` as the CUDA driver sees it (CUDA_VISIBLE_DEVICES applies). The driver
// (libcuda.so.1) is opened with dlopen, so a CPU-only build and a machine without a GPU both work.
GpuMemory gpu_memory(int local_rank);

}  // namespace moe
