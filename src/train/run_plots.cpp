// Owns running launch/moe_plot.py for log.plots (run_plots.h).
#include "train/run_plots.h"

#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

extern char** environ;

namespace moe {

namespace {

std::string plot_python() {
  if (const char* p = std::getenv("MOE_PLOT_PYTHON"); p && *p) return p;
  return MOE_VENV_PY;
}
std::string plot_script() { return std::string(MOE_SOURCE_DIR) + "/launch/moe_plot.py"; }

bool executable(const std::string& p) { return ::access(p.c_str(), X_OK) == 0; }
bool readable(const std::string& p) { return ::access(p.c_str(), R_OK) == 0; }

}  // namespace

std::string run_plots_problem() {
  const std::string py = plot_python(), script = plot_script();
  if (!executable(py))
    return "log.plots: true needs the project's Python environment (matplotlib) at " + py +
           ": run launch/setup.sh, or set MOE_PLOT_PYTHON to a python with matplotlib";
  if (!readable(script)) return "log.plots: true needs " + script + " (the plot tool of this checkout)";
  return "";
}

std::string make_run_plots(const std::string& run_dir) {
  const std::string py = plot_python(), script = plot_script();
  std::vector<char*> argv = {const_cast<char*>(py.c_str()), const_cast<char*>(script.c_str()),
                             const_cast<char*>(run_dir.c_str()), nullptr};
  pid_t pid = 0;
  if (const int rc = ::posix_spawn(&pid, py.c_str(), nullptr, nullptr, argv.data(), environ); rc != 0)
    return "cannot start " + py + ": " + std::strerror(rc);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return std::string("waitpid: ") + std::strerror(errno);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  return WIFEXITED(status) ? script + " exited " + std::to_string(WEXITSTATUS(status))
                           : script + " was killed by signal " + std::to_string(WTERMSIG(status));
}

}  // namespace moe
