// Owns `moe-prep build`: streaming text / JSONL / chat files through the tokenizer (and chat template) in parallel batches into the token files of TokenFiles, in input order (DESIGN §6 C6.prep).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace moe {

struct BuildOptions {
  std::string tokenizer_dir;
  std::string out_dir;
  std::string format;                  // text | jsonl | chat
  std::string chat_template = "auto";  // auto | mixtral | chatml | chatml-plain | none (jsonl only)
  bool mask_prompt = false;
  bool strict = false;  // the first malformed line stops the build (BadInput, exit 2); nothing is published
  int threads = 0;      // 0: OpenMP's default (OMP_NUM_THREADS or all cores)
  std::vector<std::string> inputs;
  std::FILE* log = stderr;                      // malformed-line reports, progress, summary
  size_t batch_bytes = size_t(4) << 20;  // input bytes per parallel round (bounds memory: about 5x this)
};

struct BuildStats {
  uint64_t num_docs = 0, num_tokens = 0, num_loss_tokens = 0;
  uint64_t skipped_lines = 0;     // malformed lines reported and skipped
  uint64_t prefix_fallback_docs = 0;  // documents whose loss spans needed CutMethod::Prefixes
  uint64_t input_bytes = 0;
  double seconds = 0;
  std::string chat_template;  // the template used ("" when none)
};

// contract: C6.prep
// Runs the build. Option errors (unknown format or template, an input that cannot be opened, --mask-prompt or
// --chat-template with --format text) are BadInput before any output is written. Each malformed line is
// reported on opts.log as `FILE:LINE: what` and skipped; with strict it is BadInput instead. On any error the
// temporary files are removed and nothing in out_dir changes.
BuildStats run_build(const BuildOptions& opts);

}  // namespace moe
