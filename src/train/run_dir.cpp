// Owns RunDirClaim and run_dir_problems: one run per run.dir / checkpoint dir, no new run over earlier checkpoints.
#include "train/run_dir.h"

#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <filesystem>

#include "core/error.h"
#include "train/checkpoint_files.h"
#include "train/runtime.h"

namespace moe {

namespace fs = std::filesystem;

std::string checkpoint_dir(const Config& cfg) {
  return cfg.checkpoint.dir.empty() ? (fs::path(cfg.resolved_run_dir()) / "checkpoints").string() : cfg.checkpoint.dir;
}


// "" when dir exists as a directory or can be created, else why not, naming `key`. Nothing is left behind:
// the first missing component is made and removed again (the real test of the file system, also as root).
static std::string creatable_problem(const std::string& dir, const char* key) {
  std::error_code ec;
  const fs::path want = fs::absolute(dir, ec);
  fs::path p = want, child;
  while (!p.empty() && !fs::exists(p, ec) && p != p.parent_path()) {
    child = p;
    p = p.parent_path();
  }
  auto why = [&](const std::string& what) { return std::string(key) + ": cannot create '" + dir + "': " + what; };
  if (!fs::is_directory(p, ec)) return why("'" + p.string() + "' is not a directory");
  if (child.empty()) return "";  // dir itself exists (and is a directory: p == want)
  if (::mkdir(child.c_str(), 0755) != 0) return why(std::strerror(errno));
  ::rmdir(child.c_str());
  return "";
}

static std::string earlier_checkpoints(const Config& cfg, const std::vector<std::pair<i64, fs::path>>& old) {
  return "checkpoint dir '" + checkpoint_dir(cfg) + "' (of run.dir '" + cfg.resolved_run_dir() +
         "') holds checkpoints of an earlier run (" + std::to_string(old.size()) + ", newest " +
         old.front().second.filename().string() +
         "); continue it with --resume auto, start over with --set run.overwrite=true (removes them), or give this "
         "run another run.dir / run.name / checkpoint.dir";
}

static void remove_checkpoints(const std::vector<std::pair<i64, fs::path>>& files, const std::string& dir,
                               const char* why) {
  std::error_code ec;
  for (const auto& c : files) fs::remove(c.second, ec);
  spdlog::warn("run.overwrite: removed {} checkpoint(s) from {} ({})", files.size(), dir, why);
}

void RunDirClaim::claim(const Config& cfg, Communicator& world, ResumeIntent intent) {
  run_agreed(world, [&] {
    if (world.rank() != 0) return;
    const std::string problem = run_lock_.acquire(cfg.resolved_run_dir(), "run.dir");
    MT_INPUT_CHECK(problem.empty(), problem);
    // The checkpoint dir has a lock of its own even inside run.dir: another run may name it as its
    // checkpoint.dir.
    const std::string dir = checkpoint_dir(cfg);
    const std::string p = ckpt_lock_.acquire(dir, "checkpoint.dir");
    MT_INPUT_CHECK(p.empty(), p);
    if (intent != ResumeIntent::None) return;
    const auto old = list_checkpoints(dir);
    if (old.empty()) return;
    MT_INPUT_CHECK(cfg.run.overwrite, earlier_checkpoints(cfg, old));
    // Start over: an older run's files would otherwise outrank this run's (resume auto takes the newest step).
    std::error_code ec;
    fs::remove(fs::path(dir) / "latest", ec);
    remove_checkpoints(old, dir, "a new run starts over");
  });
}

void RunDirClaim::after_resume(const Config& cfg, Communicator& world, ResumeIntent intent, long step) {
  run_agreed(world, [&] {
    if (world.rank() != 0 || intent == ResumeIntent::None) return;
    const std::string dir = checkpoint_dir(cfg);
    std::vector<std::pair<i64, fs::path>> newer;
    for (const auto& c : list_checkpoints(dir))
      if (c.first > step) newer.push_back(c);
    if (newer.empty()) return;
    if (intent == ResumeIntent::Auto) {
      for (const auto& c : newer) {
        std::error_code ec;
        fs::rename(c.second, c.second.string() + ".skipped", ec);
        spdlog::warn("{} was skipped by the resume; renamed to {}.skipped so it cannot outrank this run's checkpoints",
                     c.second.string(), c.second.filename().string());
      }
      return;
    }
    MT_INPUT_CHECK(cfg.run.overwrite, "checkpoint dir '", dir, "' holds ", newer.size(),
                   " checkpoint(s) newer than the resumed step ", step, " (newest ", newer.front().second.filename().string(),
                   "): they would outrank this run's under --resume auto; set --set run.overwrite=true to remove "
                   "them, or give this run another run.dir / checkpoint.dir");
    remove_checkpoints(newer, dir, "newer than the resumed step");
  });
}

std::string RunDirClaim::checkpoint_dir_problem() const {
  if (ckpt_lock_.dir().empty() || ckpt_lock_.intact()) return "";
  return "checkpoint dir '" + ckpt_lock_.dir() + "' was removed or replaced during the run (its lock went with it); "
         "stopping so that no other run shares it. Checkpoints written before are where they were moved to";
}

std::vector<std::string> run_dir_problems(const Config& cfg, ResumeIntent intent) {
  std::vector<std::string> out;
  auto check_dir = [&](const std::string& dir, const char* key) {
    const std::string holder = RunDirLock::holder(dir, key);
    if (!holder.empty()) out.push_back(holder);
    const std::string p = creatable_problem(dir, key);
    if (!p.empty()) out.push_back(p);
  };
  check_dir(cfg.resolved_run_dir(), "run.dir");
  check_dir(checkpoint_dir(cfg), "checkpoint.dir");
  if (intent == ResumeIntent::None && !cfg.run.overwrite) {
    const auto old = list_checkpoints(checkpoint_dir(cfg));
    if (!old.empty()) out.push_back(earlier_checkpoints(cfg, old));
  }
  return out;
}

}  // namespace moe
