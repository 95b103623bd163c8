// Owns the checks a run makes before it allocates anything (shared by a real run and --dry-run): model shape, supported options, layout, data, memory.
#pragma once
#include <string>
#include <vector>

#include "config/config.h"
#include "train/machine_memory.h"
#include "train/memory_plan.h"

namespace moe {

// Run: the first problem throws (BadInput, exit 2); a plan larger than this machine throws with the plan.
// DryRun: problems are collected so that one dry run lists them all; the memory comparison only warns.
enum class PreflightMode { Run, DryRun };

struct Preflight {
  Config cfg;                          // model shape resolved (model.init_from / upcycle.from config.json)
  MemoryPlan plan;                     // per rank
  i64 data_tokens = -1;                // tokens in data.path; -1 when the data check failed
  int local_ranks = 1;                 // ranks of this job on this machine (the launcher's count)
  HostMemory host;
  GpuMemory gpu;                       // only asked for train.device: cuda
  std::vector<std::string> warnings;   // the plan exceeds this machine / the GPU
  std::vector<std::string> problems;   // DryRun: what a real run would stop on (exit 2)
};

// Every option set to a value this build does not implement yet, one message each ("data.mix is not
// implemented yet ..."); empty when the run can go ahead. check_supported throws the list as BadInput.
std::vector<std::string> unsupported_options(const Config& cfg);

// In order: resolve the model shape (throws in both modes: nothing can be planned without it); parallel.ep
// divides the world and model.num_experts (throws in both modes); supported options; data.path (size checks;
// DryRun also reads every id); the per-rank memory plan against this machine's available memory (times the
// ranks of this job on it) and, for train.device: cuda, the GPU's. MOE_MEMORY_CHECK=off turns the Run-mode
// memory stop into a warning (for people who know their machine overcommits safely).
Preflight preflight(const Config& in, int world, PreflightMode mode);

// The dry-run report: plan, precision, this machine's memory, warnings, then what a real run would stop on.
std::string format_preflight(const Preflight& p);

}  // namespace moe
