// Owns the moe-prep command line (DESIGN §6): `encode` text lines to token-id lines with an HF tokenizer, `decode` id lines back to text, `build` token files from text/JSONL/chat data, and the `chat` template debug view. Lines are processed in parallel (OpenMP threads) and written in input order.
#include <CLI/CLI.hpp>
#include <omp.h>

#include <charconv>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/chat/chat_template.h"
#include "data/prep/build.h"
#include "data/prep/line_reader.h"
#include "data/tokenizer/tokenizer.h"

namespace {

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
  moe::LineReader reader(stdin);
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

// `moe-prep chat`: one JSON conversation ({"messages": [...]} or a bare list of messages) per line → the rendered
// text as one JSON string per line, or with --spans {"text": ..., "loss_spans": [[begin, end], ...]} (byte offsets
// into the UTF-8 text).
void render_chat_line(const moe::ChatTemplate& tpl, bool gen_prompt, bool spans, std::string_view line,
                      std::string& out) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line.begin(), line.end());
  } catch (const nlohmann::json::exception&) {
    MT_INPUT_FAIL("chat: the line is not JSON");
  }
  const nlohmann::json& ms = j.is_object() && j.contains("messages") ? j["messages"] : j;
  MT_INPUT_CHECK(ms.is_array(), "chat: expected {\"messages\": [...]} or a list of messages");
  std::vector<moe::ChatMessage> messages;
  for (const auto& m : ms) {
    MT_INPUT_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                       m["content"].is_string(),
                   "chat: every message needs a string role and a string content");
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  const moe::RenderedChat r = tpl.render(messages, gen_prompt);
  nlohmann::json o = r.text;
  if (spans) {
    nlohmann::json list = nlohmann::json::array();
    for (const moe::CharSpan& s : r.loss_spans) list.push_back({s.begin, s.end});
    o = {{"text", r.text}, {"loss_spans", list}};
  }
  out = o.dump();
  out += '\n';
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe-prep: prepare training data with a Hugging Face tokenizer"};
  app.require_subcommand(1);
  std::string dir, chat_template = "auto";
  bool add_special = false, jsonl = false, skip_special = false, gen_prompt = false, spans = false;
  CLI::App* enc = app.add_subcommand("encode", "text lines on stdin -> one JSON array of token ids per line on stdout");
  enc->add_option("--tokenizer", dir, "HF tokenizer directory (tokenizer.json, tokenizer_config.json)")->required();
  enc->add_flag("--add-special-tokens", add_special, "add the post-processor's special tokens (e.g. BOS)");
  enc->add_flag("--jsonl", jsonl, "each input line is a JSON string (so texts may hold newlines)");
  CLI::App* dec = app.add_subcommand("decode", "JSON arrays of token ids on stdin -> one JSON string per line on stdout");
  dec->add_option("--tokenizer", dir, "HF tokenizer directory (tokenizer.json, tokenizer_config.json)")->required();
  dec->add_flag("--skip-special-tokens", skip_special, "leave special tokens out of the text");

  moe::BuildOptions bo;
  CLI::App* build = app.add_subcommand("build", "text / JSONL / chat files -> OUT_DIR/{tokens.bin, loss_mask.bin, docs.bin, meta.json}");
  build->add_option("--tokenizer", bo.tokenizer_dir, "HF tokenizer directory")->required();
  build->add_option("--out", bo.out_dir, "output directory (created when missing)")->required();
  build->add_option("--format", bo.format, "text: one document per line; jsonl: {text} | {question, answer} | {prompt, completion}; chat: {messages}")
      ->required()->check(CLI::IsMember({"text", "jsonl", "chat"}));
  build->add_option("--chat-template", bo.chat_template, "auto | mixtral | chatml | chatml-plain | none (jsonl: plain prompt + completion)")
      ->check(CLI::IsMember({"auto", "mixtral", "chatml", "chatml-plain", "none"}));
  build->add_flag("--mask-prompt", bo.mask_prompt, "loss only on assistant / answer / completion tokens and their end-of-turn token");
  build->add_flag("--strict", bo.strict, "the first malformed line stops the build (exit 2) instead of being skipped");
  build->add_option("--threads", bo.threads, "encoding threads (default: OMP_NUM_THREADS or all cores)")->check(CLI::NonNegativeNumber);
  build->add_option("INPUT", bo.inputs, "input files")->required();

  CLI::App* chat = app.add_subcommand("chat", "conversations (JSON, one per line) on stdin -> rendered chat-template text as JSON strings");
  chat->add_option("--tokenizer", dir, "HF tokenizer directory")->required();
  chat->add_option("--chat-template", chat_template, "auto | mixtral | chatml | chatml-plain")
      ->check(CLI::IsMember({"auto", "mixtral", "chatml", "chatml-plain"}));
  chat->add_flag("--add-generation-prompt", gen_prompt, "end with the template's assistant header");
  chat->add_flag("--spans", spans, "print {\"text\", \"loss_spans\"} objects (byte offsets of the loss spans)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    if (build->parsed()) {
      const moe::BuildStats st = moe::run_build(bo);
      std::fprintf(stderr,
                   "moe-prep build: %llu docs, %llu tokens (%llu loss tokens), %llu malformed lines skipped, "
                   "%.1f MB in %.1f s (%.1f MB/s) -> %s\n",
                   static_cast<unsigned long long>(st.num_docs), static_cast<unsigned long long>(st.num_tokens),
                   static_cast<unsigned long long>(st.num_loss_tokens),
                   static_cast<unsigned long long>(st.skipped_lines), double(st.input_bytes) / 1e6, st.seconds,
                   st.seconds > 0 ? double(st.input_bytes) / 1e6 / st.seconds : 0.0, bo.out_dir.c_str());
      return 0;
    }
    const moe::Tokenizer tk = moe::Tokenizer::from_dir(dir);
    if (chat->parsed()) {
      const moe::ChatTemplate tpl = moe::ChatTemplate::by_name(chat_template, dir, tk);
      return run_lines([&](std::string_view line, std::string& out) { render_chat_line(tpl, gen_prompt, spans, line, out); });
    }
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
