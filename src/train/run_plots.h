// Owns log.plots: running the project's plot tool (launch/moe_plot.py, matplotlib in the project venv) on a run dir.
#pragma once
#include <string>

namespace moe {

// The interpreter and script log.plots runs: $MOE_PLOT_PYTHON, else the project venv's python chosen at configure
// time (MOE_VENV_PY: $MOE_TRAIN_VENV or ~/.cache/moe-train/venv); the script is this checkout's launch/moe_plot.py.
// "" when both exist, else what is missing and how to get it (launch/setup.sh) — preflight refuses log.plots then.
std::string run_plots_problem();

// Runs `python launch/moe_plot.py RUN_DIR` (PNGs and report.md in RUN_DIR/plots) and waits. Returns "" on success,
// else the reason (exit status, or that it could not start); the caller warns: the run's results are already saved.
std::string make_run_plots(const std::string& run_dir);

}  // namespace moe
