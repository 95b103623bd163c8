// Owns launcher discovery (DESIGN §3 launch/): rank, world size and local rank from mpirun / srun / PMIx environments.
#pragma once
#include <string>

namespace moe {

enum class Launcher { None, Mpirun, Slurm, Pmix };

struct LaunchEnv {
  Launcher launcher = Launcher::None;
  int rank = 0, world = 1, local_rank = 0;
  std::string describe() const;  // e.g. "mpirun rank 1/4 (local 1)"
};

// Reads OMPI_COMM_WORLD_*, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, PMIX_RANK (REFERENCE §6).
// `None` means a plain single process: MPI is not initialised at all.
LaunchEnv detect_launch_env();

}  // namespace moe
