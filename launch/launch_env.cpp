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

LaunchEnv detect_launch_env() {
  LaunchEnv e;
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    e.launcher = Launcher::Mpirun;
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    e.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
  } else if (std::getenv("SLURM_STEP_ID") && std::getenv("SLURM_PROCID")) {
    // Inside an srun step (not merely inside an sbatch allocation).
    e.launcher = Launcher::Slurm;
    e.rank = env_int("SLURM_PROCID", 0);
    e.world = env_int("SLURM_STEP_NUM_TASKS", env_int("SLURM_NTASKS", 1));
    e.local_rank = env_int("SLURM_LOCALID", 0);
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
         std::to_string(local_rank) + ")";
}

}  // namespace moe
