// Owns the moe-prep command line (DESIGN §6): `encode` text lines to token-id lines with an HF tokenizer, and `decode` id lines back to text. Lines are encoded in parallel (OpenMP threads) and written in input order.
#include <CLI/CLI.hpp>
#include <omp.h>

#include <charconv>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/tokenizer/tokenizer.h"

namespace {

constexpr size_t kReadBytes = size_t(4) << 20;  // stdin is read in blocks of this size
constexpr size_t kBatchLines = 1 << 15;         // lines encoded per parallel round
constexpr size_t kBatchBytes = size_t(16) << 20;

// Reads stdin as '\n'-terminated lines (the last may lack its '\n'), about kBatchBytes at a time.
class LineReader {
 public:
  // Fills `lines` with views into an internal buffer, valid until the next call; false at the end of input.
  bool next_batch(std::vector<std::string_view>& lines) {
    lines.clear();
    buf_.erase(0, pos_);
    pos_ = 0;
    for (;;) {
      while (!eof_ && buf_.size() < kBatchBytes) read_block();
      // Views are taken only now: the buffer does not grow again before the caller is done with them.
      size_t p = 0;
      while (lines.size() < kBatchLines) {
        const size_t nl = buf_.find('\n', p);
        if (nl == std::string::npos) {
          if (eof_ && p < buf_.size()) {
            lines.emplace_back(buf_.data() + p, buf_.size() - p);
            p = buf_.size();
          }
          break;
        }
        lines.emplace_back(buf_.data() + p, nl - p);
        p = nl + 1;
      }
      pos_ = p;
      if (!lines.empty() || eof_) return !lines.empty();
      read_block();  // one line longer than the buffer: read on until its end
    }
  }

 private:
  void read_block() {
    const size_t old = buf_.size();
    buf_.resize(old + kReadBytes);
    const size_t got = std::fread(buf_.data() + old, 1, kReadBytes, stdin);
    buf_.resize(old + got);
    if (got == 0) eof_ = true;
  }
  std::string buf_;
  size_t pos_ = 0;
  bool eof_ = false;
};

void append_ids(std::string& out, const std::vector<moe::Tokenizer::Id>& ids) {
  out += '[';
  char num[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    const auto r = std::to_chars(num, num + sizeof num, ids[i]);
    out.append(num, r.ptr);
  }
  out += "]\n";
}

struct LineError {
  size_t line = 0;  // 1-based input line, 0 = none
  std::string msg;
};

// contract: C6.tokenizer (one output line per input line, in order; a bad line is exit 2 with its number)
// Runs `fn(text, out)` on every line of stdin in parallel and writes the outputs in order. Stops at the first
// bad line (after writing the lines before it) with its message on stderr; returns the exit code.
template <typename Fn>
int run_lines(Fn&& fn) {
  LineReader reader;
  std::vector<std::string_view> lines;
  std::vector<std::string> outs;
  size_t first_line = 1;
  while (reader.next_batch(lines)) {
    outs.assign(lines.size(), std::string());
    std::vector<LineError> errors(static_cast<size_t>(omp_get_max_threads()));
#pragma omp parallel for schedule(dynamic, 64)
    for (long i = 0; i < long(lines.size()); ++i) {
      LineError& err = errors[size_t(omp_get_thread_num())];
      if (err.line && err.line < first_line + size_t(i)) continue;  // this thread already failed earlier
      try {
        fn(lines[size_t(i)], outs[size_t(i)]);
      } catch (const moe::Error& e) {
        err = {first_line + size_t(i), e.what()};
      } catch (const std::exception& e) {
        err = {first_line + size_t(i), std::string("internal error: ") + e.what()};
      }
    }
    const LineError* bad = nullptr;
    for (const LineError& e : errors)
      if (e.line && (!bad || e.line < bad->line)) bad = &e;
    const size_t n_ok = bad ? bad->line - first_line : lines.size();
    for (size_t i = 0; i < n_ok; ++i) std::fwrite(outs[i].data(), 1, outs[i].size(), stdout);
    if (bad) {
      std::fflush(stdout);
      std::fprintf(stderr, "moe-prep: stdin line %zu: %s\n", bad->line, bad->msg.c_str());
      return bad->msg.rfind("internal error", 0) == 0 ? 1 : 2;
    }
    first_line += lines.size();
  }
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::perror("moe-prep: writing stdout");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe-prep: prepare training data with a Hugging Face tokenizer"};
  app.require_subcommand(1);
  std::string dir;
  bool add_special = false, jsonl = false, skip_special = false;
  CLI::App* enc = app.add_subcommand("encode", "text lines on stdin -> one JSON array of token ids per line on stdout");
  enc->add_option("--tokenizer", dir, "HF tokenizer directory (tokenizer.json, tokenizer_config.json)")->required();
  enc->add_flag("--add-special-tokens", add_special, "add the post-processor's special tokens (e.g. BOS)");
  enc->add_flag("--jsonl", jsonl, "each input line is a JSON string (so texts may hold newlines)");
  CLI::App* dec = app.add_subcommand("decode", "JSON arrays of token ids on stdin -> one JSON string per line on stdout");
  dec->add_option("--tokenizer", dir, "HF tokenizer directory (tokenizer.json, tokenizer_config.json)")->required();
  dec->add_flag("--skip-special-tokens", skip_special, "leave special tokens out of the text");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    const moe::Tokenizer tk = moe::Tokenizer::from_dir(dir);
    if (enc->parsed()) {
      return run_lines([&](std::string_view line, std::string& out) {
        thread_local std::vector<moe::Tokenizer::Id> ids;
        ids.clear();
        if (jsonl) {
          nlohmann::json j;
          try {
            j = nlohmann::json::parse(line.begin(), line.end());
          } catch (const nlohmann::json::exception&) {
            MT_INPUT_FAIL("--jsonl: the line is not JSON (each line must be one JSON string)");
          }
          MT_INPUT_CHECK(j.is_string(), "--jsonl: the line is JSON ", j.type_name(), ", not a string");
          tk.encode(j.get_ref<const std::string&>(), add_special, ids);
        } else {
          tk.encode(line, add_special, ids);
        }
        append_ids(out, ids);
      });
    }
    return run_lines([&](std::string_view line, std::string& out) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line.begin(), line.end());
      } catch (const nlohmann::json::exception&) {
        MT_INPUT_FAIL("decode: the line is not JSON (each line must be a JSON array of token ids)");
      }
      MT_INPUT_CHECK(j.is_array(), "decode: the line is JSON ", j.type_name(), ", not an array of token ids");
      std::vector<moe::Tokenizer::Id> ids;
      ids.reserve(j.size());
      for (const auto& v : j) {
        MT_INPUT_CHECK(v.is_number_unsigned() && v.get<uint64_t>() <= 0xFFFFFFFFu, "decode: ", v.dump(),
                       " is not a token id (an integer 0..4294967295)");
        ids.push_back(v.get<moe::Tokenizer::Id>());
      }
      out = nlohmann::json(tk.decode(ids, skip_special)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      out += '\n';
    });
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe-prep: %s\n", e.what());
    return e.exit_code();
  }
}
