// Owns run.dir/metrics.jsonl (DESIGN §6–7): one checked, flushed line per step; a resume keeps only the steps before it.
#pragma once
#include <string>

#include "core/dims.h"

namespace moe {

class MetricsLog {
 public:
  MetricsLog() = default;
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // contract: C7.metrics_resume. Opens `path` for a run that continues after `resumed_step` updates.
  // resumed_step 0: a new, empty file. Otherwise the lines of steps 0..resumed_step are kept (step 0: the
  // eval.at_start baseline), each once and in
  // order; lines of later steps, repeats and a torn or unparseable line are dropped (rewritten to path.tmp,
  // then renamed). Errors: BadInput naming the file and the OS error (run.dir is unusable).
  void open(const std::string& path, i64 resumed_step);

  // Appends `json` and a newline with one write(2) (flushed to the kernel). A failed or short write removes
  // the partial line and raises Internal naming the file and the OS error (e.g. No space left on device).
  void append(const std::string& json);

  bool is_open() const { return fd_ >= 0; }

 private:
  std::string path_;
  int fd_ = -1;
  i64 size_ = 0;   // bytes of complete lines in the file
  i64 lines_ = 0;  // lines appended by this process (for MOE_FAULT_INJECT=metrics_write:<line>:<errno>)
};

}  // namespace moe
