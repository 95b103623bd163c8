// Owns the start-up tokenization of raw run data (data_tokenize.h): moe-prep build, once, on rank 0.
#include "train/data_tokenize.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/prep/build.h"
#include "data/tokenizer/tokenizer.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

bool regular(const std::string& p, struct stat* st) { return ::stat(p.c_str(), st) == 0 && S_ISREG(st->st_mode); }

// "chat" when the first non-empty line of a JSONL file is an object with "messages", else "jsonl".
std::string jsonl_kind(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    return j.is_object() && j.contains("messages") ? "chat" : "jsonl";
  }
  return "jsonl";
}

// What a prepared directory must have been built from: input, its size and mtime, tokenizer, options.
std::string fingerprint(const std::string& input, const DataConfig& d, const std::string& format) {
  struct stat st {};
  ::stat(input.c_str(), &st);
  std::ostringstream os;
  os << fs::absolute(input).string() << '|' << st.st_size << '|' << st.st_mtime << '|'
     << fs::absolute(d.tokenizer).string() << '|' << format << '|'
     << (d.chat_template.empty() ? "auto" : d.chat_template) << '|' << d.mask_prompt;
  return os.str();
}

}  // namespace

bool data_needs_tokenizing(const DataConfig& d) {
  return d.format == DataFormat::Jsonl || (d.format == DataFormat::Text && !d.tokenizer.empty());
}

void check_raw_sources(const DataConfig& d, const std::string& eval_data) {
  MT_INPUT_CHECK(!d.tokenizer.empty(), "data.format: jsonl needs data.tokenizer (an HF tokenizer directory) to "
                 "tokenize it");
  (void)Tokenizer::from_dir(d.tokenizer);
  MT_INPUT_CHECK(d.mix.empty() || d.path.empty(), "data.path and data.mix are both set: give one file in data.path, or "
                 "several with weights in data.mix");
  std::vector<std::pair<std::string, std::string>> files;  // (key, path)
  if (d.mix.empty()) files.push_back({"data.path", d.path});
  for (const auto& [p, w] : d.mix) files.push_back({"data.mix", p});
  if (!eval_data.empty()) files.push_back({"eval.data", eval_data});
  for (const auto& [key, p] : files) {
    struct stat st {};
    MT_INPUT_CHECK(!p.empty(), key, " is not set");
    MT_INPUT_CHECK(regular(p, &st), key, " '", p, "' is not a readable regular file (raw ",
                   d.format == DataFormat::Jsonl ? "JSONL" : "text", " to tokenize with data.tokenizer)");
  }
}

Config tokenize_run_data(const Config& cfg, Communicator& world) {
  if (!data_needs_tokenizing(cfg.data)) return cfg;
  Config out = cfg;
  const std::string root = cfg.resolved_run_dir() + "/data";
  int k = 0;
  std::string problem;
  auto prepare = [&](const std::string& input) {
    const std::string format = cfg.data.format == DataFormat::Text ? "text" : jsonl_kind(input);
    const std::string dir = root + "/" + std::to_string(k++) + "-" + fs::path(input).filename().string();
    if (world.rank() == 0 && problem.empty()) {
      try {
        const std::string fp = fingerprint(input, cfg.data, format);
        std::ifstream old(dir + "/source.txt");
        std::string have((std::istreambuf_iterator<char>(old)), std::istreambuf_iterator<char>());
        if (have != fp || !fs::exists(dir + "/meta.json")) {
          BuildOptions o;
          o.tokenizer_dir = cfg.data.tokenizer;
          o.out_dir = dir;
          o.format = format;
          if (format != "text") o.chat_template = cfg.data.chat_template.empty() ? "auto" : cfg.data.chat_template;
          o.mask_prompt = cfg.data.mask_prompt && format != "text";
          o.inputs = {input};
          fs::create_directories(dir);
          const BuildStats s = run_build(o);
          std::ofstream(dir + "/source.txt") << fp;
          spdlog::info("tokenized {} -> {}: {} documents, {} tokens ({} in the loss), {} malformed lines skipped",
                       input, dir, s.num_docs, s.num_tokens, s.num_loss_tokens, s.skipped_lines);
        } else {
          spdlog::info("tokenized data of {} is up to date in {}", input, dir);
        }
      } catch (const Error& e) {
        problem = e.what();
      }
    }
    return dir;
  };
  if (out.data.mix.empty()) {
    out.data.path = prepare(cfg.data.path);
  } else {
    for (auto& [p, w] : out.data.mix) p = prepare(p);
  }
  if (!cfg.eval.data.empty()) out.eval.data = prepare(cfg.eval.data);
  out.data.format = DataFormat::Tokens;
  out.data.chat_template.clear();  // applied by the build; the token directories carry its result
  // Rank 0's verdict for every rank (the others waited here).
  double bad = problem.empty() ? 0 : 1;
  world.all_reduce_sum(&bad, 1);
  MT_INPUT_CHECK(bad == 0, problem.empty() ? std::string("rank 0 could not tokenize the data") : problem);
  return out;
}

}  // namespace moe
