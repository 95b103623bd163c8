// Owns runtime start/stop and the rank-prefixed abort path shared by moe-train and the test tools.
#include "train/runtime.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

#include "core/error.h"

#include <algorithm>
#include <vector>

namespace moe {

Runtime start_runtime() {
  Runtime rt;
  rt.env = detect_launch_env();
  if (rt.env.launcher == Launcher::None) {
    rt.world = make_self_communicator();
    return rt;
  }
  rt.world = make_mpi_world();
  if (rt.env.world > 0)
    MT_CHECK(rt.world->size() == rt.env.world, "launcher says ", rt.env.world, " ranks but MPI has ", rt.world->size(),
             " (srun without --mpi=pmix starts independent singletons)");
  rt.env.rank = rt.world->rank();
  rt.env.world = rt.world->size();
  if (rt.env.rank != 0) spdlog::set_level(spdlog::level::warn);
  return rt;
}

int fail_run(const Runtime& rt, const char* what, int code) {
  const int R = rt.world ? rt.world->size() : 1;
  const int r = rt.world ? rt.world->rank() : 0;
  if (R > 1) {
    // Rank 0 speaks for the world: an error every rank meets (config, resume, an agreed checkpoint I/O failure)
    // is printed once, by rank 0, whose abort ends the others while they wait here. An error only rank r
    // meets is printed by r after the wait (rank 0 is then stuck in a collective and cannot abort).
    if (r != 0) std::this_thread::sleep_for(std::chrono::seconds(3));
    spdlog::error("[rank {}/{}] {}", r, R, what);
    abort_world(code);
  }
  spdlog::error("{}", what);
  return code;
}

void run_agreed(Communicator& world, const std::function<void()>& fn) {
  ErrorKind kind = ErrorKind::Internal;
  std::string msg;
  bool failed = false;
  try {
    fn();
  } catch (const Error& e) {
    failed = true;
    kind = e.kind();
    msg = e.what();
  } catch (const std::exception& e) {
    failed = true;
    msg = std::string("internal error: ") + e.what();
  }
  const int R = world.size(), r = world.rank();
  if (R == 1) {
    if (failed) throw AgreedError(kind, msg);
    return;
  }
  std::vector<double> flags(size_t(R), 0.0);
  flags[size_t(r)] = failed ? 1.0 : 0.0;
  world.all_reduce_sum(flags.data(), R);
  const int reporter = int(std::find(flags.begin(), flags.end(), 1.0) - flags.begin());
  if (reporter == R) return;
  double k = double(int(kind));
  world.broadcast(&k, 1, CommDtype::F64, reporter);
  throw AgreedError(ErrorKind(int(k)), r == reporter ? (R > 1 ? "[rank " + std::to_string(r) + "/" + std::to_string(R) + "] " : "") + msg : std::string());
}

void stop_runtime(Runtime& rt) {
  if (rt.env.launcher == Launcher::None) return;
  rt.world.reset();
  finalize_mpi();
}

}  // namespace moe
