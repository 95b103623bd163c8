// Owns reading the launcher's environment variables into a LaunchEnv.
#include "launch/launch_env.h"

#include <cstdlib>
#include <string>

namespace moe {

static int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == '\0') ? int(x) : fallback;
}

// Slurm's per-node task list, e.g. "4" or "2(x3),1": the count of the node with index `node`; 0 if unreadable.
static int tasks_on_node(const char* list, int node) {
  if (!list || node < 0) return 0;
  std::string s(list);
  size_t pos = 0;
  int index = 0;
  while (pos < s.size()) {
    char* end = nullptr;
    const long count = std::strtol(s.c_str() + pos, &end, 10);
    if (end == s.c_str() + pos || count <= 0) return 0;
    pos = size_t(end - s.c_str());
    long repeat = 1;
    if (s.compare(pos, 2, "(x") == 0) {
      repeat = std::strtol(s.c_str() + pos + 2, &end, 10);
      if (repeat <= 0 || *end != ')') return 0;
      pos = size_t(end - s.c_str()) + 1;
    }
    if (node < index + repeat) return int(count);
    index += int(repeat);
    if (pos < s.size() && s[pos] == ',') ++pos;
  }
  return 0;
}

LaunchEnv detect_launch_env() {
  LaunchEnv e;
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    e.launcher = Launcher::Mpirun;
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    e.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    e.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (std::getenv("SLURM_STEP_ID") && std::getenv("SLURM_PROCID")) {
    // Inside an srun step (not merely inside an sbatch allocation).
    e.launcher = Launcher::Slurm;
    e.rank = env_int("SLURM_PROCID", 0);
    e.world = env_int("SLURM_STEP_NUM_TASKS", env_int("SLURM_NTASKS", 1));
    e.local_rank = env_int("SLURM_LOCALID", 0);
    const int here = tasks_on_node(std::getenv("SLURM_STEP_TASKS_PER_NODE"), env_int("SLURM_NODEID", 0));
    e.local_size = here > 0 ? here : 1;
  } else if (std::getenv("PMIX_RANK")) {
    e.launcher = Launcher::Pmix;
    e.rank = env_int("PMIX_RANK", 0);
    e.world = 0;  // not in the environment: asked from MPI after init
  }
  return e;
}

std::string LaunchEnv::describe() const {
  const char* l = launcher == Launcher::Mpirun ? "mpirun"
                  : launcher == Launcher::Slurm ? "srun"
                  : launcher == Launcher::Pmix  ? "pmix"
                                                : "single process";
  return std::string(l) + " rank " + std::to_string(rank) + "/" + std::to_string(world) + " (local " +
         std::to_string(local_rank) + "/" + std::to_string(local_size) + ")";
}

}  // namespace moe
