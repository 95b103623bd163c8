// Owns the I/O fault-injection hook for tests: MOE_FAULT_INJECT names the write that fails and the OS error it reports.
#pragma once
#include <cstdlib>
#include <string>

namespace moe {

// MOE_FAULT_INJECT is a comma-separated list of entries; only the I/O layer reads it:
//   ckpt_write:<rank>:<errno>     that rank's checkpoint write fails after the first tensor (peers are then
//                                 inside collective HDF5 calls), as if the OS had returned <errno>
//   ckpt_preflight:off            skip the free-space check before a checkpoint (a full disk is then met
//                                 inside HDF5 itself)
//   metrics_write:<line>:<errno>  the <line>-th line appended to metrics.jsonl (1-based) fails with <errno>
// Returns the errno for `site` with first field `key`, or 0 when no entry matches. `key` < 0 matches any.
inline int injected_fault(const std::string& site, long key) {
  const char* env = std::getenv("MOE_FAULT_INJECT");
  if (!env) return 0;
  const std::string all(env);
  for (size_t a = 0; a <= all.size();) {
    size_t b = all.find(',', a);
    if (b == std::string::npos) b = all.size();
    const std::string e = all.substr(a, b - a);
    a = b + 1;
    const size_t c1 = e.find(':'), c2 = c1 == std::string::npos ? c1 : e.find(':', c1 + 1);
    if (c2 == std::string::npos || e.compare(0, c1, site) != 0) continue;
    const long k = std::strtol(e.c_str() + c1 + 1, nullptr, 10);
    if (key >= 0 && k != key) continue;
    return int(std::strtol(e.c_str() + c2 + 1, nullptr, 10));
  }
  return 0;
}

// True when an entry `site:off` is present (e.g. ckpt_preflight:off).
inline bool injected_off(const std::string& site) {
  const char* env = std::getenv("MOE_FAULT_INJECT");
  return env && ("," + std::string(env) + ",").find("," + site + ":off,") != std::string::npos;
}

}  // namespace moe
