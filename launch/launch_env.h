// Owns launcher discovery (DESIGN §3 launch/): rank, world size and local rank from mpirun / srun / PMIx environments.
#pragma once
#include <string>

namespace moe {

enum class Launcher { None, Mpirun, Slurm, Pmix };

struct LaunchEnv {
  Launcher launcher = Launcher::None;
  int rank = 0, world = 1, local_rank = 0;
  int local_size = 1;  // ranks of this job on this node (OMPI_COMM_WORLD_LOCAL_SIZE, SLURM_STEP_TASKS_PER_NODE)
  std::string describe() const;  // e.g. "mpirun rank 1/4 (local 1)"
};

// Reads OMPI_COMM_WORLD_*, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, PMIX_RANK (docs/DESIGN.md §6, launching).
// `None` means a plain single process: MPI is not initialised at all.
LaunchEnv detect_launch_env();

}  // namespace moe
