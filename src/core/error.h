// Owns the project's one error type and check macros (STYLE habit 6); exit-code policy of DESIGN §6.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace moe {

// Why a run stopped. BadInput maps to exit code 2 (config, data, checkpoint, model files).
// Diverged: NaN/Inf loss or gradient (exit 3); nothing is written after it.
enum class ErrorKind { BadInput, Internal, Diverged };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return kind_ == ErrorKind::BadInput ? 2 : kind_ == ErrorKind::Diverged ? 3 : 1; }

 private:
  ErrorKind kind_;
};

// A failure every rank has agreed on (run_agreed in train/runtime.h): each rank exits cleanly with the code;
// the message is non-empty on the one rank that reports it (the lowest failing rank), so it is printed once.
class AgreedError : public Error {
 public:
  AgreedError(ErrorKind kind, const std::string& msg) : Error(kind, msg) {}
};

namespace detail {
inline void stream_all(std::ostringstream&) {}
template <typename A, typename... Rest>
void stream_all(std::ostringstream& os, const A& a, const Rest&... rest) {
  os << a;
  stream_all(os, rest...);
}
template <typename... Args>
[[noreturn]] void raise(ErrorKind kind, const char* file, int line, const Args&... args) {
  std::ostringstream os;
  stream_all(os, args...);
  std::string f(file);
  auto slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  os << " (" << f << ":" << line << ")";
  throw Error(kind, os.str());
}
}  // namespace detail

}  // namespace moe

// Internal invariant: a bug in moe-train if it fails.
#define MT_CHECK(cond, ...)                                                                \
  do {                                                                                     \
    if (!(cond)) ::moe::detail::raise(::moe::ErrorKind::Internal, __FILE__, __LINE__,      \
                                      "internal check failed: " #cond "; ", ##__VA_ARGS__); \
  } while (0)

// User-facing input problem (exit 2): the message names the file/key, what came, what is allowed.
#define MT_INPUT_CHECK(cond, ...)                                                      \
  do {                                                                                 \
    if (!(cond)) ::moe::detail::raise(::moe::ErrorKind::BadInput, __FILE__, __LINE__, \
                                      __VA_ARGS__);                                    \
  } while (0)

#define MT_INPUT_FAIL(...) ::moe::detail::raise(::moe::ErrorKind::BadInput, __FILE__, __LINE__, __VA_ARGS__)
