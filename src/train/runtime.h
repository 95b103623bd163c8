// Owns process start-up and shutdown for the apps: launcher detection, the world communicator, rank-aware failure.
#pragma once
#include <memory>

#include "comm/communicator.h"
#include "launch/launch_env.h"

namespace moe {

struct Runtime {
  LaunchEnv env;
  std::unique_ptr<Communicator> world;
};

// Under mpirun/srun: initialises MPI and checks the launcher's world size; otherwise one process, no MPI.
Runtime start_runtime();

// Logs the message prefixed with the rank; with several ranks aborts every rank (none may hang in a
// collective) with `code`; returns `code` for a single process.
int fail_run(const Runtime& rt, const char* what, int code);

// Ends MPI cleanly when it was started.
void stop_runtime(Runtime& rt);

}  // namespace moe
