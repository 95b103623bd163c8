// Owns Trainer::claim_run_dir: one run per run.dir (lock) and no new run silently over an earlier run's checkpoints.
#include <spdlog/spdlog.h>

#include <filesystem>

#include "core/error.h"
#include "train/checkpoint_files.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace moe {

namespace fs = std::filesystem;

// Rank 0's part; returns "" or why this run may not start here.
static std::string claim_on_rank0(RunDirLock& lock, const Config& cfg, const std::string& ckpt_dir, bool resuming) {
  const std::string run_dir = cfg.resolved_run_dir();
  std::string problem = lock.acquire(run_dir);
  if (!problem.empty() || resuming) return problem;
  const auto old = list_checkpoints(ckpt_dir);
  if (old.empty()) return "";
  if (!cfg.run.overwrite)
    return "run.dir '" + run_dir + "' holds checkpoints of an earlier run (" + std::to_string(old.size()) +
           " in " + ckpt_dir + ", newest " + old.front().second.filename().string() +
           "); continue it with --resume auto, start over with --set run.overwrite=true (removes them), or give "
           "this run another run.dir / run.name";
  // Start over: an older run's files would otherwise outrank this run's (resume auto takes the newest step).
  std::error_code ec;
  for (const auto& c : old) fs::remove(c.second, ec);
  fs::remove(fs::path(ckpt_dir) / "latest", ec);
  spdlog::warn("run.overwrite: removed {} checkpoint(s) of an earlier run from {}", old.size(), ckpt_dir);
  return "";
}

void Trainer::claim_run_dir(bool resuming) {
  // Every rank learns rank 0's verdict; only rank 0 names the problem (once, not once per rank).
  run_agreed(world_comm_, [&] {
    if (rank_ != 0) return;
    const std::string problem = claim_on_rank0(run_lock_, cfg_, checkpoint_dir(), resuming);
    MT_INPUT_CHECK(problem.empty(), problem);
  });
}

}  // namespace moe
