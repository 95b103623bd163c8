// Owns the moe-train command line (DESIGN §6): parse, build, run; errors → exit 2 for bad input.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "config/config.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "kernels/ref/gemm_ref.h"
#include "launch/cpu_share.h"
#include "train/data_tokenize.h"
#include "train/preflight.h"
#include "train/run_dir.h"
#include "train/runtime.h"
#include "train/stop_signal.h"
#include "train/trainer.h"

// OpenBLAS 0.3.21 does not recognise some AVX-512 CPUs (AMD Zen 4/5) and falls back to AVX2 kernels; its core
// type can only be chosen before it loads (bench/: 1.5x -> ~2.7x torch eager on such a CPU).
// MOE_BLAS_AUTOTUNE=0 or any OPENBLAS_CORETYPE turns it off. True when it set the variable.
static bool choose_blas_coretype() {
  const char* opt = std::getenv("MOE_BLAS_AUTOTUNE");
  if (std::getenv("OPENBLAS_CORETYPE") || (opt && std::string(opt) == "0")) return false;
  const char* core = moe::blas_better_coretype();
  if (!*core) return false;
  setenv("OPENBLAS_CORETYPE", core, 1);
  return true;
}

// OpenBLAS and OpenMP read their variables when they load, so a changed setting needs a fresh process image:
// moe-train restarts itself once (same pid, same arguments; MPI is not initialised yet). The CPU-sharing note
// travels in MOE_CPU_SHARE_NOTE so that rank 0 can log it after the restart.
static void restart_if_needed(char** argv) {
  const bool blas = choose_blas_coretype();
  const moe::CpuShare share = moe::plan_cpu_share(moe::detect_launch_env());
  if (!share.note.empty()) setenv("MOE_CPU_SHARE_NOTE", share.note.c_str(), 1);
  if (!blas && !share.env_changed) return;
  moe::block_stop_signals();  // a stop signal during the exec stays pending for the new image
  execv("/proc/self/exe", argv);  // returns only on failure: carry on as is
}

int main(int argc, char** argv) {
  restart_if_needed(argv);
  moe::install_stop_handlers();  // from the start: a preemption signal during start-up must not kill the run
  CLI::App app{"moe-train: train Mixture-of-Experts language models (Mixtral, Qwen3-MoE)"};
  std::string config_path, resume;
  std::vector<std::string> sets;
  bool dry_run = false;
  int plan_world = 0;
  app.add_option("config", config_path, "run configuration (YAML)")->required();
  app.add_option("--set", sets, "override a config key: --set train.lr=1e-4 (repeatable)");
  app.add_option("--resume", resume, "resume from a checkpoint: auto or a path");
  app.add_flag("--dry-run", dry_run,
               "run every check a real run makes before step 1 without allocating; print the parameter count, "
               "precision and per-rank memory plan against this machine; exit 0, or 2 listing what would stop a run");
  app.add_option("--world", plan_world, "with --dry-run: plan for this many ranks (default: the launcher's)")
      ->check(CLI::Range(1, 1 << 20));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  spdlog::set_pattern("[%H:%M:%S] %v");
  if (plan_world > 0 && !dry_run) {
    spdlog::error("--world is not implemented yet without --dry-run: a run takes its world size from the launcher "
                  "(mpirun -np N / srun -n N); use --world N together with --dry-run to plan for N ranks");
    return 2;
  }
  moe::Runtime rt;
  try {
    rt = moe::start_runtime();
    if (const char* note = std::getenv("MOE_CPU_SHARE_NOTE"); note && rt.world->rank() == 0) spdlog::info("{}", note);
    // Every rank reads the same config: one message for a bad one, not one per rank.
    moe::Config cfg;
    moe::run_agreed(*rt.world, [&] { cfg = moe::load_config(config_path, sets); });
    // A dry run has nothing to save: a stop signal ends it at once, as it would any tool.
    moe::keep_stop_handlers(!dry_run && cfg.checkpoint.on_signal);
    if (dry_run) {
      // Without --world a lone process plans for the smallest world the config allows (ep ranks).
      const int world = plan_world > 0 ? plan_world : std::max(rt.world->size(), cfg.parallel.ep);
      moe::Preflight p;
      moe::run_agreed(*rt.world, [&] { p = moe::preflight(cfg, world, moe::PreflightMode::DryRun); });
      // The file-system probes run on rank 0 only (they create and remove directories: ranks would race), and
      // its verdict is every rank's exit code.
      int64_t stop = 0;
      if (rt.world->rank() == 0) {
        for (std::string& why : moe::run_dir_problems(cfg, resume.empty() ? moe::ResumeIntent::None : moe::ResumeIntent::Auto))
          p.problems.push_back(std::move(why));
        if (!resume.empty() && resume != "auto") {
          try {
            moe::read_checkpoint_meta(resume);
          } catch (const moe::Error& e) {
            p.problems.push_back(std::string("--resume: ") + e.what());
          }
        }
        std::fputs(moe::format_preflight(p).c_str(), stdout);
        std::fflush(stdout);
        stop = p.problems.empty() ? 0 : 1;
      }
      rt.world->all_reduce_sum(&stop, 1);
      moe::stop_runtime(rt);
      return stop == 0 ? 0 : 2;
    }
    {
      const moe::ResumeIntent intent =
          resume.empty() ? moe::ResumeIntent::None : resume == "auto" ? moe::ResumeIntent::Auto : moe::ResumeIntent::Path;
      // Cheap checks first (config, data, memory plan), then the directories, then the model is built.
      moe::run_agreed(*rt.world, [&] { moe::preflight(cfg, rt.world->size(), moe::PreflightMode::Run); });
      moe::RunDirClaim claim;
      claim.claim(cfg, *rt.world, intent);
      // Raw JSONL / text with data.tokenizer: token directories under run.dir/data, made once by rank 0.
      cfg = moe::tokenize_run_data(cfg, *rt.world);
      moe::Trainer trainer(cfg, *rt.world);
      trainer.set_run_dir_claim(&claim);
      if (!resume.empty()) {
        trainer.resume(resume);
        claim.after_resume(cfg, *rt.world, intent, trainer.start_step());
      }
      trainer.run();
    }
    moe::stop_runtime(rt);
    return 0;
  } catch (const moe::AgreedError& e) {
    if (*e.what()) spdlog::error("{}", e.what());
    moe::stop_runtime(rt);
    return e.exit_code();
  } catch (const moe::Error& e) {
    return moe::fail_run(rt, e.what(), e.exit_code());
  } catch (const std::exception& e) {
    return moe::fail_run(rt, (std::string("internal error: ") + e.what()).c_str(), 1);
  }
}
