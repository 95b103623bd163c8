// Owns the metrics.jsonl file: resume trimming through a temporary and checked appends (see metrics_log.h).
#include "train/metrics_log.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/fault_inject.h"
#include "io/json_file.h"

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
  if (line.empty() || line[0] != '{' || !json_depth_within(line.data(), line.data() + line.size(), 16)) return -1;
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return -1;
  return j["step"].get<i64>();
}

// Copies the lines of steps 0..resumed_step of the old log at `path` to `out`, each once and in order, reading
// in bounded chunks (any size, no line held whole beyond kMaxLine). A last line without '\n' was torn by a kill.
// Dropped lines (later steps, repeats, damage) and missing steps are reported. Returns 0 or an errno of `out`.
int keep_lines(const std::string& path, int out, i64 resumed_step, i64* kept_bytes) {
  constexpr size_t kMaxLine = size_t(16) << 20;  // longer lines are damage, not metrics
  const int in = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (in < 0) {
    MT_INPUT_CHECK(errno == ENOENT, "run.dir: cannot read '", path, "': ", os_error(errno));
    return 0;  // no earlier log
  }
  struct stat st {};
  if (::fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(in);
    MT_INPUT_FAIL("run.dir: '", path, "' is not a regular file; move it away to resume here");
  }
  std::string line, buf(size_t(1) << 20, '\0');
  bool overlong = false;
  i64 last = -1, kept = 0, dropped = 0;  // step 0: the eval.at_start baseline line, when there is one
  int err = 0;
  for (;;) {
    const ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(in);
      MT_INPUT_FAIL("run.dir: cannot read '", path, "': ", os_error(e));
    }
    if (n == 0) break;
    for (size_t a = 0; a < size_t(n);) {
      const char* nl = static_cast<const char*>(std::memchr(buf.data() + a, '\n', size_t(n) - a));
      const size_t end = nl ? size_t(nl - buf.data()) : size_t(n);
      if (!overlong) line.append(buf, a, end - a);
      if (line.size() > kMaxLine) {
        overlong = true;
        line.clear();
      }
      a = end + 1;
      if (!nl) break;
      const i64 s = overlong ? -1 : step_of(line);
      if (s > last && s <= resumed_step && err == 0) {
        line += '\n';
        err = write_all(out, line);
        *kept_bytes += i64(line.size());
        last = s;
        kept += s > 0;
      } else {
        ++dropped;
      }
      line.clear();
      overlong = false;
    }
  }
  ::close(in);
  if (!line.empty() || overlong) ++dropped;  // torn last line
  if (dropped > 0)
    spdlog::warn("{}: kept {} line(s) of steps 1..{}, dropped {} (after the resumed step, repeated, torn or damaged)",
                 path, kept, resumed_step, dropped);
  if (kept < resumed_step)
    spdlog::warn("{}: {} of steps 1..{} have no line (lost before this resume)", path, resumed_step - kept, resumed_step);
  return err;
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
  // A new file, or the kept lines, go to a temporary that replaces the old file whole.
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = fd < 0 ? errno : 0;
  i64 kept_bytes = 0;
  if (err == 0 && resumed_step > 0) err = keep_lines(path, fd, resumed_step, &kept_bytes);
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
  size_ = kept_bytes;
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
