// Owns the run.dir lock (one run per run.dir): an fcntl lock on run.dir/.lock naming its holder.
#pragma once
#include <string>

namespace moe {

// Holds an exclusive lock on DIR/.lock for its lifetime (the OS drops it when the process dies, so a killed
// run never leaves a stale lock). The file holds "pid <P> host <H> since <UTC time>" of the holder.
class RunDirLock {
 public:
  RunDirLock() = default;
  // Creates DIR when missing. Returns "" when the lock is held now, else why not: another process holds it
  // (its pid, host and start time from the file) or DIR cannot be created/written (path + OS error).
  std::string acquire(const std::string& dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace moe
