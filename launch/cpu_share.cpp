// Owns the oversubscription check and the yield/thread settings of launch/cpu_share.h.
#include "launch/cpu_share.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace moe {

static int affinity_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// OMP_NUM_THREADS may be a list ("4,2"): the first entry is the outer level's count; 0 if unset/unreadable.
static int omp_threads_from_env() {
  const char* v = std::getenv("OMP_NUM_THREADS");
  if (!v || !*v) return 0;
  const long n = std::strtol(v, nullptr, 10);
  return n > 0 ? int(n) : 0;
}

static bool set_if_unset(const char* name, const std::string& value) {
  const char* v = std::getenv(name);
  if (v && *v) return false;
  setenv(name, value.c_str(), 1);
  return true;
}

CpuShare plan_cpu_share(const LaunchEnv& env) {
  CpuShare s;
  s.cpus = affinity_cpus();
  s.local_ranks = std::max(1, env.local_size);
  const int user_threads = omp_threads_from_env();
  s.threads = user_threads > 0 ? user_threads : s.cpus;  // OpenMP's default: one thread per CPU it may use
  const char* opt = std::getenv("MOE_CPU_SHARE");
  if (env.launcher == Launcher::None || (opt && std::string(opt) == "0")) return s;
  s.oversubscribed = long(s.local_ranks) * long(s.threads) > s.cpus;
  if (!s.oversubscribed) return s;
  std::string done;
  if (set_if_unset("OMPI_MCA_mpi_yield_when_idle", "1")) done += " OMPI_MCA_mpi_yield_when_idle=1";
  if (user_threads == 0) {
    s.threads = std::max(1, s.cpus / s.local_ranks);
    setenv("OMP_NUM_THREADS", std::to_string(s.threads).c_str(), 1);
    done += " OMP_NUM_THREADS=" + std::to_string(s.threads);
    s.env_changed = true;
  }
  if (s.local_ranks * s.threads > s.cpus && set_if_unset("OMP_WAIT_POLICY", "passive")) {
    done += " OMP_WAIT_POLICY=passive";
    s.env_changed = true;
  }
  if (!done.empty())
    s.note = std::to_string(s.local_ranks) + " ranks x " + std::to_string(user_threads > 0 ? user_threads : s.cpus) +
             " threads on " + std::to_string(s.cpus) + " CPUs of this node: set" + done +
             " (waiting ranks yield their core; MOE_CPU_SHARE=0 turns this off)";
  return s;
}

}  // namespace moe
