// Owns process start-up and shutdown for the apps: launcher detection, the world communicator, rank-aware failure.
#pragma once
#include <functional>
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

// Runs fn on every rank of world (fn must not communicate) and agrees on its outcome: when it throws on any
// rank, every rank throws AgreedError with the exit code of the lowest failing rank, whose message only that
// rank carries (one message, not one per rank; nobody is left waiting in a collective). Collective.
void run_agreed(Communicator& world, const std::function<void()>& fn);

// Ends MPI cleanly when it was started.
void stop_runtime(Runtime& rt);

}  // namespace moe
