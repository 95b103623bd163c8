// Owns how ranks share this node's CPUs: detects more busy threads than cores before MPI and OpenMP start, and makes waits yield.
#pragma once
#include <string>

#include "launch/launch_env.h"

namespace moe {

// What plan_cpu_share decided for this process (one rank of `local_ranks` on this node).
struct CpuShare {
  int cpus = 1;              // CPUs this process may run on (sched_getaffinity)
  int local_ranks = 1;       // ranks of the job on this node (LaunchEnv::local_size)
  int threads = 1;           // OpenMP threads per rank after the policy
  bool oversubscribed = false;  // local_ranks × threads (before the policy) > cpus
  bool env_changed = false;     // OpenMP variables were set: they only take effect in a fresh process image
  std::string note;             // one line for the log, "" when nothing was done
};

// With more busy threads than CPUs (local_ranks × OpenMP threads > cpus, e.g. `srun --overcommit -n 4` on
// 2 cores), a rank that spins while waiting (MPI progress polling, OpenMP barriers) takes the core from the
// rank it waits for. mpirun turns on OpenMPI's yield for oversubscribed nodes itself; srun cannot, because
// OpenMPI does not know the node is oversubscribed. So, for variables the user has not set:
//   OMPI_MCA_mpi_yield_when_idle=1              (read at MPI_Init)
//   OMP_NUM_THREADS = max(1, cpus / local_ranks) (read when OpenMP loads: needs a fresh process image)
//   OMP_WAIT_POLICY=passive when ranks alone outnumber the cpus
// Must run before MPI_Init and before the first OpenMP region. MOE_CPU_SHARE=0 turns it off.
CpuShare plan_cpu_share(const LaunchEnv& env);

}  // namespace moe
