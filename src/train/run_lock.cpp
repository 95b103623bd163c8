// Owns RunDirLock: fcntl (POSIX) record locks, which also work on NFS-mounted run directories.
#include "train/run_lock.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

namespace moe {

namespace fs = std::filesystem;

std::string RunDirLock::acquire(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return "run.dir: cannot create '" + dir + "': " + ec.message();
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return "run.dir: cannot open '" + path + "': " + std::strerror(errno);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_SETLK, &fl) != 0) {
    const int err = errno;
    char holder[256] = {0};
    const ssize_t n = ::pread(fd, holder, sizeof holder - 1, 0);
    std::string who = n > 0 ? std::string(holder, size_t(n)) : std::string();
    while (!who.empty() && (who.back() == '\n' || who.back() == '\0')) who.pop_back();
    ::close(fd);
    if (err != EACCES && err != EAGAIN) return "run.dir: cannot lock '" + path + "': " + std::strerror(err);
    return "run.dir '" + dir + "' is in use by another moe-train run (" + (who.empty() ? "holder unknown" : who) +
           "); wait for it to finish, or give this run another run.dir / run.name";
  }
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  char when[64] = {0};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  const std::string who = "pid " + std::to_string(::getpid()) + " host " + host + " since " + when + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, who.data(), who.size(), 0) != ssize_t(who.size())) {
    const int err = errno;
    ::close(fd);
    return "run.dir: cannot write '" + path + "': " + std::strerror(err);
  }
  fd_ = fd;
  return "";
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the lock; the file stays (removing it would race a new holder)
}

}  // namespace moe
