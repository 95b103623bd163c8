// Owns the metrics.jsonl file: resume trimming through a temporary and checked appends (see metrics_log.h).
#include "train/metrics_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/fault_inject.h"

namespace moe {

namespace {

std::string os_error(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

// Writes all of `text` at the end of fd; returns 0 or the errno of the failure.
int write_all(int fd, const std::string& text) {
  for (size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    done += size_t(n);
  }
  return 0;
}

// The step of one metrics line, or -1 when the line is not a JSON object with an integer "step".
i64 step_of(const std::string& line) {
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return -1;
  return j["step"].get<i64>();
}

}  // namespace

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::open(const std::string& path, i64 resumed_step) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  path_ = path;
  lines_ = 0;
  std::string keep;
  if (resumed_step > 0) {
    // Lines end with '\n'; a last line without one was torn by a kill and is dropped like any bad line.
    std::ifstream in(path, std::ios::binary);
    std::stringstream all;
    all << in.rdbuf();
    const std::string text = all.str();
    i64 last = 0;
    for (size_t a = 0, b; (b = text.find('\n', a)) != std::string::npos; a = b + 1) {
      const std::string line = text.substr(a, b - a);
      const i64 s = step_of(line);
      if (s > last && s <= resumed_step) {
        keep += line + "\n";
        last = s;
      }
    }
  }
  // A new file, or the kept lines, go to a temporary that replaces the old file whole.
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = fd < 0 ? errno : write_all(fd, keep);
  if (fd >= 0 && err == 0 && ::fsync(fd) != 0) err = errno;
  if (fd >= 0 && err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    MT_INPUT_FAIL("run.dir: cannot write '", path, "': ", os_error(err));
  }
  // The descriptor now names `path`; appends go to its end.
  if (::lseek(fd, 0, SEEK_END) < 0 || ::fcntl(fd, F_SETFL, O_APPEND) != 0) {
    err = errno;
    ::close(fd);
    MT_INPUT_FAIL("run.dir: cannot write '", path, "': ", os_error(err));
  }
  fd_ = fd;
  size_ = i64(keep.size());
}

void MetricsLog::append(const std::string& json) {
  MT_CHECK(fd_ >= 0, "metrics log not open");
  ++lines_;
  int err = injected_fault("metrics_write", lines_);
  if (err == 0) err = write_all(fd_, json + "\n");
  if (err != 0) {
    // Leave whole lines only: a resume or a reader never meets half a record.
    const int trunc_ok = ::ftruncate(fd_, off_t(size_));
    (void)trunc_ok;
    detail::raise(ErrorKind::Internal, __FILE__, __LINE__, "cannot write '", path_, "': ", os_error(err),
                  "; the run stops (metrics.jsonl keeps the steps before this one)");
  }
  size_ += i64(json.size()) + 1;
}

}  // namespace moe
