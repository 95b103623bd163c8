// Owns a run's claim on its directories (DESIGN §6 "One run per run.dir"): locks, creation, and the rule that a
// new run never silently continues over, or is outranked by, an earlier run's checkpoints.
#pragma once
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "config/config.h"
#include "train/run_lock.h"

namespace moe {

// How this process starts: fresh, `--resume auto`, or `--resume PATH`.
enum class ResumeIntent { None, Auto, Path };

// checkpoint.dir, or run.dir/checkpoints when it is empty.
std::string checkpoint_dir(const Config& cfg);

class RunDirClaim {
 public:
  // Collective; rank 0 does the file work and every rank gets its verdict (one message, exit 2 everywhere):
  // creates run.dir and the checkpoint dir and locks both (another live run holding either → refused, naming
  // its pid and host); a fresh run (ResumeIntent::None)
  // into a checkpoint dir holding checkpoints is refused unless run.overwrite, which removes them first.
  // Cheap: call it before the model is built.
  void claim(const Config& cfg, Communicator& world, ResumeIntent intent);
  // Collective, after the resume chose its step: checkpoints newer than `step` would outrank this run's under
  // `--resume auto` and survive pruning. Under Auto they are files the resume skipped as damaged: they are
  // renamed to step_<N>.h5.skipped (kept for inspection, no longer listed). Under Path (a rewind, or a
  // checkpoint from elsewhere) they are removed with run.overwrite, else the run is refused.
  void after_resume(const Config& cfg, Communicator& world, ResumeIntent intent, long step);
  // Rank 0 before each checkpoint: "" while the checkpoint dir is still the locked one, else why not (it was
  // removed or replaced during the run, so another run could now share it). Other ranks: always "".
  std::string checkpoint_dir_problem() const;

 private:
  RunDirLock run_lock_, ckpt_lock_;
};

// What claim() would refuse, without taking locks or changing files (for --dry-run).
std::vector<std::string> run_dir_problems(const Config& cfg, ResumeIntent intent);

}  // namespace moe
