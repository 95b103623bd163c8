// Owns the directory lock of a run (one run per run.dir / checkpoint dir): an fcntl lock on DIR/.lock naming its holder.
#pragma once
#include <string>

namespace moe {

// Holds an exclusive lock on DIR/.lock for its lifetime (the OS drops it when the process dies, so a killed
// run never leaves a stale lock). The file holds "pid <P> host <H> since <UTC time>" of the holder.
class RunDirLock {
 public:
  RunDirLock() = default;
  // Creates DIR when missing. Returns "" when the lock is held now, else why not, naming `key` (the config
  // key of DIR): another process holds it (its pid, host and start time from the file), or DIR/.lock cannot
  // be created or written (path + OS error; a symlink there is refused, never followed).
  std::string acquire(const std::string& dir, const std::string& key);
  // Without locking: "" when no live process holds DIR/.lock, else the same message acquire() would give.
  static std::string holder(const std::string& dir, const std::string& key = "run.dir");
  // True while DIR/.lock is still the file this lock holds (false when DIR was removed or replaced since).
  bool intact() const;
  const std::string& dir() const { return dir_; }
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
  std::string dir_;
};

}  // namespace moe
