// Owns the `moe-prep build` pipeline: option checks, template choice, batched parallel encoding in input order, malformed-line reports, progress and meta.json (DESIGN §6 C6.prep).
#include "data/prep/build.h"

#include <omp.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.h"
#include "data/chat/chat_template.h"
#include "data/prep/doc_encoder.h"
#include "data/prep/line_reader.h"
#include "data/prep/progress.h"
#include "data/prep/records.h"
#include "data/prep/token_files.h"
#include "data/tokenizer/tokenizer.h"

namespace moe {

namespace {

// The template for this build: required for chat, optional for jsonl (auto: the directory's when it has one),
// refused for text.
std::optional<ChatTemplate> choose_template(const BuildOptions& o, InputFormat f, const Tokenizer& tk) {
  const std::string& name = o.chat_template;
  if (f == InputFormat::Text) {
    MT_INPUT_CHECK(name == "auto", "--chat-template ", name, " does not apply to --format text (lines are plain text)");
    return std::nullopt;
  }
  if (name == "none") {
    MT_INPUT_CHECK(f == InputFormat::Jsonl, "--chat-template none is not possible with --format chat");
    return std::nullopt;
  }
  if (f == InputFormat::Jsonl && name == "auto") {
    std::string source;
    if (!ChatTemplate::read_template_text(o.tokenizer_dir, source)) return std::nullopt;
  }
  return ChatTemplate::by_name(name, o.tokenizer_dir, tk);
}

// A line report reads `FILE:LINE: what`: the " (source.cpp:N)" that Error messages end with is left out.
std::string without_location(const std::string& msg) {
  const size_t open = msg.rfind(" (");
  if (open == std::string::npos || msg.back() != ')') return msg;
  const std::string tail = msg.substr(open + 2, msg.size() - open - 3);
  const size_t colon = tail.rfind(':');
  if (colon == std::string::npos || tail.find(".cpp") == std::string::npos) return msg;
  for (size_t i = colon + 1; i < tail.size(); ++i)
    if (tail[i] < '0' || tail[i] > '9') return msg;
  return msg.substr(0, open);
}

struct LineResult {
  EncodedDoc doc;
  std::string error;  // non-empty: malformed
  bool blank = false;
};

std::string meta_json(const BuildOptions& o, InputFormat f, const Tokenizer& tk, const TokenFiles& files,
                      const BuildStats& st) {
  nlohmann::ordered_json m;
  m["format_version"] = 1;
  m["tokenizer"] = o.tokenizer_dir;
  m["vocab_size"] = tk.vocab_size();
  m["token_dtype"] = "uint32";
  m["bos_id"] = tk.bos_id() ? nlohmann::ordered_json(*tk.bos_id()) : nlohmann::ordered_json();
  m["eos_id"] = tk.eos_id() ? nlohmann::ordered_json(*tk.eos_id()) : nlohmann::ordered_json();
  m["num_docs"] = files.num_docs();
  m["num_tokens"] = files.num_tokens();
  m["num_loss_tokens"] = files.num_loss_tokens();
  m["format"] = input_format_name(f);
  m["chat_template"] = st.chat_template.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(st.chat_template);
  m["mask_prompt"] = o.mask_prompt;
  m["inputs"] = o.inputs;
  m["skipped_lines"] = st.skipped_lines;
  m["prefix_fallback_docs"] = st.prefix_fallback_docs;
  m["files"] = {{"tokens", "tokens.bin"}, {"loss_mask", "loss_mask.bin"}, {"docs", "docs.bin"}};
  return m.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

BuildStats run_build(const BuildOptions& o) {
  const InputFormat f = parse_input_format(o.format);
  MT_INPUT_CHECK(!o.inputs.empty(), "no INPUT files");
  MT_INPUT_CHECK(!(o.mask_prompt && f == InputFormat::Text),
                 "--mask-prompt does not apply to --format text (a text line has no prompt; every token is a target)");
  MT_INPUT_CHECK(o.threads >= 0, "--threads ", o.threads, " must be >= 0");
  BuildStats st;
  for (const std::string& in : o.inputs) {
    struct stat s;
    MT_INPUT_CHECK(::stat(in.c_str(), &s) == 0, "cannot read input ", in, ": ", std::strerror(errno));
    MT_INPUT_CHECK(!S_ISDIR(s.st_mode), "input ", in, " is a directory");
    if (S_ISREG(s.st_mode)) st.input_bytes += uint64_t(s.st_size);
  }
  const Tokenizer tk = Tokenizer::from_dir(o.tokenizer_dir);
  const std::optional<ChatTemplate> tpl = choose_template(o, f, tk);
  if (tpl) st.chat_template = tpl->name();
  const DocEncoder enc(tk, o.mask_prompt);
  if (o.threads > 0) omp_set_num_threads(o.threads);

  TokenFiles files(o.out_dir);
  Progress progress(o.log, st.input_bytes);
  uint64_t bytes_before = 0;  // bytes of the inputs already finished
  std::vector<std::string_view> lines;
  std::vector<LineResult> results;
  for (const std::string& in : o.inputs) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(in.c_str(), "rb"), &std::fclose);
    MT_INPUT_CHECK(file, "cannot open input ", in, ": ", std::strerror(errno));
    LineReader reader(file.get(), o.batch_bytes);
    uint64_t first_line = 1;
    while (reader.next_batch(lines)) {
      results.clear();
      results.resize(lines.size());
      std::string internal;
#pragma omp parallel for schedule(dynamic, 16)
      for (long i = 0; i < long(lines.size()); ++i) {
        LineResult& r = results[size_t(i)];
        const std::string_view line = lines[size_t(i)];
        if (is_blank_line(f, line)) {
          r.blank = true;
          continue;
        }
        try {
          encode_line(f, line, tpl ? &*tpl : nullptr, enc, r.doc);
        } catch (const Error& e) {
          if (e.kind() == ErrorKind::BadInput) r.error = without_location(e.what());
          else {
#pragma omp critical(moe_prep_internal)
            internal = e.what();
          }
        } catch (const std::exception& e) {
#pragma omp critical(moe_prep_internal)
          internal = std::string("internal error: ") + e.what();
        }
      }
      if (!internal.empty()) throw Error(ErrorKind::Internal, internal);
      // contract: C6.prep (documents are written in input order; malformed lines are reported as FILE:LINE)
      for (size_t i = 0; i < results.size(); ++i) {
        LineResult& r = results[i];
        if (r.blank) continue;
        if (!r.error.empty()) {
          progress.break_line();
          const std::string where = in + ":" + std::to_string(first_line + i);
          if (o.strict) throw Error(ErrorKind::BadInput, where + ": " + r.error + " (--strict: stopped; nothing written)");
          std::fprintf(o.log, "%s: %s\n", where.c_str(), r.error.c_str());
          ++st.skipped_lines;
          continue;
        }
        st.prefix_fallback_docs += r.doc.used_prefix_fallback;
        files.append(r.doc.ids, r.doc.mask);
      }
      first_line += lines.size();
      progress.update(bytes_before + reader.bytes_done(), files.num_docs());
    }
    MT_INPUT_CHECK(!reader.error(), "cannot read input ", in, ": read error");
    bytes_before += reader.bytes_done();
  }
  st.num_docs = files.num_docs();
  st.num_tokens = files.num_tokens();
  st.num_loss_tokens = files.num_loss_tokens();
  files.commit(meta_json(o, f, tk, files, st));
  progress.break_line();
  st.seconds = progress.seconds();
  return st;
}

}  // namespace moe
