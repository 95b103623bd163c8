// Owns RunDirLock: fcntl (POSIX) record locks, which also work on NFS-mounted run directories.
#include "train/run_lock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

namespace moe {

namespace fs = std::filesystem;

namespace {

std::string read_holder(int fd) {
  char buf[256] = {0};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string who = n > 0 ? std::string(buf, size_t(n)) : std::string();
  while (!who.empty() && (who.back() == '\n' || who.back() == '\0')) who.pop_back();
  return who.empty() ? "holder unknown" : who;
}

std::string in_use(const std::string& key, const std::string& dir, const std::string& who) {
  return key + " '" + dir + "' is in use by another moe-train run (" + who +
         "); wait for it to finish, or give this run another run.dir / run.name / checkpoint.dir";
}

}  // namespace

std::string RunDirLock::acquire(const std::string& dir, const std::string& key) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return key + ": cannot create '" + dir + "': " + ec.message();
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return key + ": cannot open '" + path + "': " + std::strerror(errno);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_SETLK, &fl) != 0) {
    const int err = errno;
    const std::string who = read_holder(fd);
    ::close(fd);
    if (err != EACCES && err != EAGAIN) return key + ": cannot lock '" + path + "': " + std::strerror(err);
    return in_use(key, dir, who);
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
    return key + ": cannot write '" + path + "': " + std::strerror(err);
  }
  fd_ = fd;
  dir_ = dir;
  return "";
}

bool RunDirLock::intact() const {
  if (fd_ < 0) return false;
  struct stat held {}, now {};
  const std::string path = (fs::path(dir_) / ".lock").string();
  return ::fstat(fd_, &held) == 0 && ::lstat(path.c_str(), &now) == 0 && held.st_dev == now.st_dev &&
         held.st_ino == now.st_ino;
}

std::string RunDirLock::holder(const std::string& dir, const std::string& key) {
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return "";
  struct flock fl {};
  fl.l_type = F_WRLCK;  // would a write lock conflict? (F_GETLK works on a read-only descriptor)
  fl.l_whence = SEEK_SET;
  std::string out;
  if (::fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) out = in_use(key, dir, read_holder(fd));
  ::close(fd);
  return out;
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the lock; the file stays (removing it would race a new holder)
}

}  // namespace moe
