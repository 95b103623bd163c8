/* Owns the tiny MPI check run under srun by tests/slurm: prints rank/size, an Allreduce sum and the launcher's env. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static const char* env(const char* name) {
  const char* v = getenv(name);
  return v ? v : "-";
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  /* Sum of (rank + 1) over all ranks = size * (size + 1) / 2; a singleton start gives 1. */
  long mine = rank + 1, sum = 0;
  MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  char host[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(host, &len);
  printf("mpi_hello rank=%d size=%d sum=%ld expect=%ld host=%s slurm_procid=%s slurm_localid=%s pmix_rank=%s\n",
         rank, size, sum, (long)size * (size + 1) / 2, host, env("SLURM_PROCID"), env("SLURM_LOCALID"),
         env("PMIX_RANK"));
  fflush(stdout);
  MPI_Finalize();
  return sum == (long)size * (size + 1) / 2 ? 0 : 1;
}
