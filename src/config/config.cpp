// Owns reading, overriding, validating and printing the run configuration (DESIGN §6); the only yaml-cpp user.
#include "config/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>   // std::min, std::max, std::find
#include <cerrno>      // errno
#include <charconv>    // std::to_chars
#include <climits>     // INT_MAX
#include <cmath>       // std::isfinite
#include <cstdlib>     // std::strtoll, std::strtoull, std::strtod
#include <cstring>     // std::strerror
#include <filesystem>  // std::filesystem::exists, is_directory
#include <fstream>     // std::ifstream
#include <functional>  // std::function
#include <set>         // std::set (duplicate-key detection)
#include <sstream>     // std::ostringstream

#include "core/dims.h"
#include "core/error.h"

namespace moe {
namespace {

// ---------------------------------------------------------------------------------------------
// Strict scalar readers: the whole text must be the value (no "10abc", no "1e3" for an int).
// ---------------------------------------------------------------------------------------------

bool read_ll(const std::string& s, long long* out) {
  if (s.empty() || !(s[0] == '-' || s[0] == '+' || (s[0] >= '0' && s[0] <= '9'))) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

bool read_u64(const std::string& s, unsigned long long* out) {
  if (s.empty() || !(s[0] >= '0' && s[0] <= '9')) return false;  // strtoull would wrap "-1"
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

bool read_double(const std::string& s, double* out) {
  if (s.empty() || s[0] == ' ' || s[0] == '\t') return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno == ERANGE || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

// Shortest text that reads back to the same double (std::to_chars), so config_to_yaml round-trips exactly.
std::string fmt_double(double v) {
  char buf[40];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  MT_CHECK(res.ec == std::errc(), "to_chars failed for a config value");
  return std::string(buf, res.ptr);
}

// At most 80 characters of s for a message (longer text ends in "..."): messages quote, never copy, inputs.
std::string brief(const std::string& s) { return s.size() <= 80 ? s : s.substr(0, 80) + "..."; }

// Documents in a YAML text, counted up to 2 through parser events (no nodes are built, so a text of many
// documents costs no memory); the parser's own errors surface in YAML::Load afterwards.
int yaml_documents(const std::string& text) {
  struct Ignore : YAML::EventHandler {
    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}
  } ignore;
  std::istringstream in(text);
  YAML::Parser parser(in);
  int n = 0;
  while (n < 2 && parser.HandleNextDocument(ignore)) ++n;
  return n;
}

// How a received node reads in a message: 'ten', a map {a: 1}, a list [1, 2], nothing (at most ~80 chars).
std::string describe(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "nothing";
  if (n.IsScalar()) return "'" + brief(n.Scalar()) + "'";
  YAML::Emitter e;
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << n;
  return std::string(n.IsMap() ? "a map " : "a list ") + brief(e.c_str());
}

// ---------------------------------------------------------------------------------------------
// The schema: one row per DESIGN §6 key. Each row knows how to set its field from a YAML node
// (type + range check in one place) and how to emit it; parse, --set, validation and
// config_to_yaml all walk this one table.
// ---------------------------------------------------------------------------------------------

struct Field {
  std::string key;   // "train.lr"
  std::string rule;  // "expects a number > 0" / "must be one of probs|position"
  std::function<bool(Config&, const YAML::Node&)> set;         // false → wrong type or out of range
  std::function<void(YAML::Emitter&, const Config&)> emit;
};

// A generic accessor: works on Config& (to set) and const Config& (to emit).
#define MT_AT(path) [](auto& c) -> auto& { return c.path; }

template <class At>
Field int_field(const char* key, At at, long long lo, long long hi = INT_MAX) {
  std::string rule;
  if (hi == INT_MAX)
    rule = lo == 1 ? "a positive integer" : lo == 0 ? "a non-negative integer"
                                                    : "an integer >= " + std::to_string(lo);
  else
    rule = "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
  return {key, "expects " + rule,
          [at, lo, hi](Config& c, const YAML::Node& n) {
            long long v = 0;
            if (!n.IsScalar() || !read_ll(n.Scalar(), &v) || v < lo || v > hi) return false;
            at(c) = static_cast<int>(v);
            return true;
          },
          [at](YAML::Emitter& e, const Config& c) { e << at(c); }};
}

template <class At>
Field u64_field(const char* key, At at) {
  return {key, "expects a non-negative integer",
          [at](Config& c, const YAML::Node& n) {
            return n.IsScalar() && read_u64(n.Scalar(), &at(c));
          },
          [at](YAML::Emitter& e, const Config& c) { e << std::to_string(at(c)); }};
}

// A real interval; each end open or closed; hi absent when has_hi is false.
struct Range {
  double lo;
  bool lo_open;
  bool has_hi;
  double hi;
  bool hi_open;
  bool holds(double v) const {
    if (lo_open ? v <= lo : v < lo) return false;
    if (has_hi && (hi_open ? v >= hi : v > hi)) return false;
    return true;
  }
  std::string text() const {
    if (!has_hi) return std::string(lo_open ? "a number > " : "a number >= ") + fmt_double(lo);
    return std::string("a number in ") + (lo_open ? "(" : "[") + fmt_double(lo) + ", " + fmt_double(hi) +
           (hi_open ? ")" : "]");
  }
};
constexpr Range kPositive{0, true, false, 0, false};   // > 0
constexpr Range kNonNeg{0, false, false, 0, false};    // >= 0
constexpr Range kUnitCO{0, false, true, 1, true};      // [0, 1)
constexpr Range kPercent{0, false, true, 100, false};  // [0, 100]

template <class At>
Field real_field(const char* key, At at, Range r) {
  return {key, "expects " + r.text(),
          [at, r](Config& c, const YAML::Node& n) {
            double v = 0;
            if (!n.IsScalar() || !read_double(n.Scalar(), &v) || !r.holds(v)) return false;
            at(c) = v;
            return true;
          },
          [at](YAML::Emitter& e, const Config& c) { e << fmt_double(at(c)); }};
}

template <class At>
Field bool_field(const char* key, At at) {
  return {key, "expects true or false",
          [at](Config& c, const YAML::Node& n) {
            if (!n.IsScalar() || (n.Scalar() != "true" && n.Scalar() != "false")) return false;
            at(c) = n.Scalar() == "true";
            return true;
          },
          [at](YAML::Emitter& e, const Config& c) { e << (at(c) ? "true" : "false"); }};
}

// Free text; an empty YAML value (`dir:`) means "".
template <class At>
Field string_field(const char* key, At at) {
  return {key, "expects a string",
          [at](Config& c, const YAML::Node& n) {
            if (n.IsNull()) { at(c).clear(); return true; }
            if (!n.IsScalar()) return false;
            at(c) = n.Scalar();
            return true;
          },
          [at](YAML::Emitter& e, const Config& c) { e << YAML::DoubleQuoted << at(c); }};
}

template <class E>
using EnumNames = std::vector<std::pair<std::string, E>>;

template <class E, class At>
Field enum_field(const char* key, At at, EnumNames<E> names) {
  std::string rule = "must be one of ";
  for (size_t i = 0; i < names.size(); ++i) rule += (i ? "|" : "") + names[i].first;
  return {key, rule,
          [at, names](Config& c, const YAML::Node& n) {
            if (!n.IsScalar()) return false;
            for (const auto& [name, value] : names)
              if (name == n.Scalar()) { at(c) = value; return true; }
            return false;
          },
          [at, names](YAML::Emitter& e, const Config& c) {
            for (const auto& [name, value] : names)
              if (value == at(c)) { e << name; return; }
            MT_CHECK(false, "enum value without a name in the config schema");
          }};
}

// peft.targets: a list of strings (empty YAML value = empty list).
template <class At>
Field string_list_field(const char* key, At at) {
  return {key, "expects a list of strings, e.g. [q_proj, v_proj]",
          [at](Config& c, const YAML::Node& n) {
            std::vector<std::string> out;
            if (!n.IsNull()) {
              if (!n.IsSequence()) return false;
              for (const YAML::Node& item : n) {
                if (!item.IsScalar()) return false;
                out.push_back(item.Scalar());
              }
            }
            at(c) = std::move(out);
            return true;
          },
          [at](YAML::Emitter& e, const Config& c) {
            e << YAML::Flow << YAML::BeginSeq;
            for (const std::string& s : at(c)) e << YAML::DoubleQuoted << s;
            e << YAML::EndSeq;
          }};
}

// model.mlp_only_layers: a list of non-negative layer indices.
template <class At>
Field int_list_field(const char* key, At at) {
  return {key, "expects a list of non-negative integers, e.g. [0, 3]",
          [at](Config& c, const YAML::Node& n) {
            std::vector<int> out;
            if (!n.IsNull()) {
              if (!n.IsSequence()) return false;
              for (const YAML::Node& item : n) {
                long long v = 0;
                if (!item.IsScalar() || !read_ll(item.Scalar(), &v) || v < 0 || v > INT_MAX) return false;
                out.push_back(int(v));
              }
            }
            at(c) = std::move(out);
            return true;
          },
          [at](YAML::Emitter& e, const Config& c) {
            e << YAML::Flow << YAML::BeginSeq;
            for (int v : at(c)) e << v;
            e << YAML::EndSeq;
          }};
}

// data.mix: a list of {path: string, weight: number > 0} maps, nothing else in each map.
template <class At>
Field mix_field(const char* key, At at) {
  return {key, "expects a list of {path: string, weight: number > 0} maps",
          [at](Config& c, const YAML::Node& n) {
            std::vector<std::pair<std::string, double>> out;
            if (!n.IsNull()) {
              if (!n.IsSequence()) return false;
              for (const YAML::Node& item : n) {
                if (!item.IsMap() || item.size() != 2) return false;
                const YAML::Node path = item["path"], weight = item["weight"];
                double w = 0;
                if (!path.IsDefined() || !path.IsScalar() || path.Scalar().empty()) return false;
                if (!weight.IsDefined() || !weight.IsScalar() || !read_double(weight.Scalar(), &w) ||
                    !kPositive.holds(w))
                  return false;
                out.emplace_back(path.Scalar(), w);
              }
            }
            at(c) = std::move(out);
            return true;
          },
          [at](YAML::Emitter& e, const Config& c) {
            e << YAML::Flow << YAML::BeginSeq;
            for (const auto& [path, weight] : at(c))
              e << YAML::BeginMap << YAML::Key << "path" << YAML::Value << YAML::DoubleQuoted << path
                << YAML::Key << "weight" << YAML::Value << fmt_double(weight) << YAML::EndMap;
            e << YAML::EndSeq;
          }};
}

// Rows are grouped by section (config_to_yaml opens one map per run of equal prefixes).
std::vector<Field> build_schema() {
  return {
      string_field("run.name", MT_AT(run.name)),
      string_field("run.dir", MT_AT(run.dir)),
      bool_field("run.overwrite", MT_AT(run.overwrite)),

      string_field("model.init_from", MT_AT(model_init_from)),
      string_field("model.adapter_from", MT_AT(model_adapter_from)),
      enum_field("model.arch", MT_AT(model.arch),
                 EnumNames<Arch>{{"mixtral", Arch::Mixtral}, {"qwen3_moe", Arch::Qwen3Moe}}),
      int_field("model.vocab_size", MT_AT(model.vocab_size), 1),
      int_field("model.hidden_size", MT_AT(model.hidden_size), 1),
      int_field("model.intermediate_size", MT_AT(model.intermediate_size), 1),
      int_field("model.moe_intermediate_size", MT_AT(model.moe_intermediate_size), 0),  // 0 → intermediate
      int_field("model.num_layers", MT_AT(model.num_layers), 1),
      int_field("model.num_heads", MT_AT(model.num_heads), 1),
      int_field("model.num_kv_heads", MT_AT(model.num_kv_heads), 1),
      int_field("model.head_dim", MT_AT(model.head_dim), 0),  // 0 → hidden_size / num_heads
      int_field("model.num_experts", MT_AT(model.num_experts), 1),
      int_field("model.top_k", MT_AT(model.top_k), 1),
      bool_field("model.norm_topk_prob", MT_AT(model.norm_topk_prob)),
      real_field("model.rope_theta", MT_AT(model.rope_theta), kPositive),
      real_field("model.rms_norm_eps", MT_AT(model.rms_norm_eps), kPositive),
      bool_field("model.tie_word_embeddings", MT_AT(model.tie_word_embeddings)),
      real_field("model.init_std", MT_AT(model.init_std), kPositive),
      // Qwen3-MoE dense/sparse layer choice (HF config.json names); Mixtral ignores them.
      int_list_field("model.mlp_only_layers", MT_AT(model.mlp_only_layers)),
      int_field("model.decoder_sparse_step", MT_AT(model.decoder_sparse_step), 1),
      int_field("model.sliding_window", MT_AT(model.sliding_window), 0),  // 0 = full causal attention

      string_field("upcycle.from", MT_AT(upcycle.from)),
      int_field("upcycle.num_experts", MT_AT(upcycle.num_experts), 1),
      int_field("upcycle.top_k", MT_AT(upcycle.top_k), 1),
      real_field("upcycle.noise", MT_AT(upcycle.noise), kNonNeg),
      real_field("upcycle.depth_pct", MT_AT(upcycle.depth_pct), kPercent),

      real_field("moe.capacity_factor", MT_AT(moe.capacity_factor), kNonNeg),  // 0 = dropless
      enum_field("moe.drop_policy", MT_AT(moe.drop_policy),
                 EnumNames<DropPolicy>{{"probs", DropPolicy::Probs}, {"position", DropPolicy::Position}}),
      real_field("moe.aux_loss_coef", MT_AT(moe.aux_loss_coef), kNonNeg),
      enum_field("moe.aux_loss_scope", MT_AT(moe.aux_loss_scope),
                 EnumNames<AuxScope>{{"micro", AuxScope::Micro}, {"global", AuxScope::Global}}),
      enum_field("moe.aux_loss_form", MT_AT(moe.aux_loss_form),
                 EnumNames<AuxForm>{{"layer", AuxForm::Layer}, {"hf", AuxForm::Hf}}),
      real_field("moe.z_loss_coef", MT_AT(moe.z_loss_coef), kNonNeg),
      real_field("moe.router_jitter", MT_AT(moe.router_jitter), kUnitCO),
      real_field("moe.router_temperature", MT_AT(moe.router_temperature), kPositive),
      real_field("moe.expert_dropout", MT_AT(moe.expert_dropout), kUnitCO),
      real_field("moe.bias_update_rate", MT_AT(moe.bias_update_rate), kNonNeg),
      real_field("moe.dropless_buffer_factor", MT_AT(moe.dropless_buffer_factor), kNonNeg),  // 0 = ep

      int_field("parallel.ep", MT_AT(parallel.ep), 1),
      int_field("parallel.zero", MT_AT(parallel.zero), 0, 3),
      enum_field("parallel.backend", MT_AT(parallel.backend),
                 EnumNames<CommBackend>{
                     {"auto", CommBackend::Auto}, {"mpi", CommBackend::Mpi}, {"nccl", CommBackend::Nccl}}),

      enum_field("train.device", MT_AT(train.device),
                 EnumNames<Device>{{"cpu", Device::Cpu}, {"cuda", Device::Cuda}}),
      enum_field("train.precision", MT_AT(train.precision),
                 EnumNames<Precision>{{"fp32", Precision::Fp32}, {"bf16", Precision::Bf16}}),
      int_field("train.seq_len", MT_AT(train.seq_len), 1),
      int_field("train.micro_batch", MT_AT(train.micro_batch), 1),
      int_field("train.grad_accum", MT_AT(train.grad_accum), 1),
      int_field("train.steps", MT_AT(train.steps), 1),
      real_field("train.lr", MT_AT(train.lr), kPositive),
      real_field("train.min_lr", MT_AT(train.min_lr), kNonNeg),
      int_field("train.warmup_steps", MT_AT(train.warmup_steps), 0),
      enum_field("train.schedule", MT_AT(train.schedule),
                 EnumNames<Schedule>{{"cosine", Schedule::Cosine}, {"constant", Schedule::Constant}}),
      real_field("train.weight_decay", MT_AT(train.weight_decay), kNonNeg),
      real_field("train.beta1", MT_AT(train.beta1), kUnitCO),
      real_field("train.beta2", MT_AT(train.beta2), kUnitCO),
      real_field("train.eps", MT_AT(train.eps), kPositive),
      real_field("train.grad_clip", MT_AT(train.grad_clip), kNonNeg),
      u64_field("train.seed", MT_AT(train.seed)),
      real_field("train.max_loss_ratio", MT_AT(train.max_loss_ratio), kNonNeg),  // 0 = off
      bool_field("train.stop_on_collapse", MT_AT(train.stop_on_collapse)),
      real_field("train.peak_tflops", MT_AT(train.peak_tflops), kNonNeg),  // 0 = per device / measured
      enum_field("train.recompute", MT_AT(train.recompute),
                 EnumNames<Recompute>{
                     {"none", Recompute::None}, {"selective", Recompute::Selective}, {"full", Recompute::Full}}),

      enum_field("peft.method", MT_AT(peft.method),
                 EnumNames<PeftMethod>{
                     {"full", PeftMethod::Full}, {"lora", PeftMethod::Lora}, {"qlora", PeftMethod::Qlora}}),
      int_field("peft.r", MT_AT(peft.r), 1),
      real_field("peft.alpha", MT_AT(peft.alpha), kPositive),
      real_field("peft.dropout", MT_AT(peft.dropout), kUnitCO),
      string_list_field("peft.targets", MT_AT(peft.targets)),
      bool_field("peft.train_router", MT_AT(peft.train_router)),
      enum_field("peft.quant", MT_AT(peft.quant), EnumNames<std::string>{{"nf4", "nf4"}}),
      bool_field("peft.double_quant", MT_AT(peft.double_quant)),
      bool_field("peft.use_rslora", MT_AT(peft.use_rslora)),

      enum_field("data.format", MT_AT(data.format),
                 EnumNames<DataFormat>{
                     {"tokens", DataFormat::Tokens}, {"jsonl", DataFormat::Jsonl}, {"text", DataFormat::Text}}),
      string_field("data.path", MT_AT(data.path)),
      enum_field("data.dtype", MT_AT(data.dtype),
                 EnumNames<TokenDtype>{{"uint32", TokenDtype::U32}, {"uint16", TokenDtype::U16}}),
      string_field("data.tokenizer", MT_AT(data.tokenizer)),
      string_field("data.chat_template", MT_AT(data.chat_template)),
      bool_field("data.mask_prompt", MT_AT(data.mask_prompt)),
      mix_field("data.mix", MT_AT(data.mix)),
      bool_field("data.shuffle", MT_AT(data.shuffle)),
      bool_field("data.reset_attention", MT_AT(data.reset_attention)),

      string_field("checkpoint.dir", MT_AT(checkpoint.dir)),
      int_field("checkpoint.every", MT_AT(checkpoint.every), 0),
      int_field("checkpoint.keep", MT_AT(checkpoint.keep), 1),
      bool_field("checkpoint.on_signal", MT_AT(checkpoint.on_signal)),
      bool_field("checkpoint.export_hf", MT_AT(checkpoint.export_hf)),

      int_field("log.every", MT_AT(log.every), 1),
      bool_field("log.plots", MT_AT(log.plots)),
      bool_field("log.tensorboard", MT_AT(log.tensorboard)),
      bool_field("log.stability_warnings", MT_AT(log.stability_warnings)),

      string_field("eval.data", MT_AT(eval.data)),
      int_field("eval.every", MT_AT(eval.every), 0),
      int_field("eval.batches", MT_AT(eval.batches), 0),
      bool_field("eval.at_start", MT_AT(eval.at_start)),
  };
}
#undef MT_AT

const std::vector<Field>& schema() {
  static const std::vector<Field> table = build_schema();
  return table;
}

std::string section_of(const std::string& key) { return key.substr(0, key.find('.')); }
std::string leaf_of(const std::string& key) {
  auto dot = key.find('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

const Field* find_field(const std::string& key) {
  for (const Field& f : schema())
    if (f.key == key) return &f;
  return nullptr;
}

// Section names in schema order: run, model, upcycle, ...
const std::vector<std::string>& sections() {
  static const std::vector<std::string> list = [] {
    std::vector<std::string> out;
    for (const Field& f : schema())
      if (out.empty() || out.back() != section_of(f.key)) out.push_back(section_of(f.key));
    return out;
  }();
  return list;
}

bool is_section(const std::string& name) {
  return std::find(sections().begin(), sections().end(), name) != sections().end();
}

std::string section_list() {
  std::string out;
  for (const std::string& s : sections()) out += (out.empty() ? "" : "|") + s;
  return out;
}

// Optimal-string-alignment distance (a swap of two neighbours costs 1: "modle" → "model").
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// " (did you mean 'train.lr'?)": the closest key or section by edit distance, else a key with the
// same leaf name in another section (train.capacity_factor → moe.capacity_factor); "" if none.
std::string suggest(const std::string& given) {
  if (given.size() > 64) return "";  // no key is that long; and the distance table grows as its length
  std::vector<std::string> candidates = sections();
  for (const Field& f : schema()) candidates.push_back(f.key);
  std::string best;
  size_t best_d = std::string::npos;
  for (const std::string& c : candidates) {
    size_t d = edit_distance(given, c);
    if (d < best_d) { best_d = d; best = c; }
  }
  if (best_d <= std::max<size_t>(2, given.size() / 4)) return " (did you mean '" + best + "'?)";
  for (const Field& f : schema())
    if (leaf_of(f.key) == leaf_of(given)) return " (did you mean '" + f.key + "'?)";
  return "";
}

std::string at_line(const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  return m.is_null() ? std::string() : "; line " + std::to_string(m.line + 1);
}

// Sets one key; `where` names the file or the --set, `tail` adds the line.
void apply(Config& cfg, const std::string& key, const YAML::Node& value, const std::string& where,
           const std::string& tail) {
  const Field* f = find_field(key);
  MT_INPUT_CHECK(f != nullptr, where, ": unknown key '", brief(key), "'", suggest(key), tail);
  MT_INPUT_CHECK(f->set(cfg, value), where, ": key '", key, "' ", f->rule, ", got ", describe(value), tail);
  cfg.given.insert(key);
}

void apply_document(Config& cfg, const YAML::Node& root, const std::string& origin) {
  if (!root.IsDefined() || root.IsNull()) return;  // empty file: all defaults
  MT_INPUT_CHECK(root.IsMap(), origin, ": expects a map of sections (", section_list(), ") at top level, got ",
                 describe(root));
  std::set<std::string> seen;
  for (const auto& sec : root) {
    MT_INPUT_CHECK(sec.first.IsScalar(), origin, ": section names must be plain words, got ",
                   describe(sec.first), at_line(sec.first));
    const std::string name = sec.first.Scalar();
    MT_INPUT_CHECK(is_section(name), origin, ": unknown section '", brief(name), "'", suggest(name), "; sections are ",
                   section_list(), at_line(sec.first));
    MT_INPUT_CHECK(seen.insert(name).second, origin, ": section '", name, "' appears twice", at_line(sec.first));
    if (sec.second.IsNull()) continue;  // "upcycle:" with nothing under it
    MT_INPUT_CHECK(sec.second.IsMap(), origin, ": section '", name, "' expects a map of keys, got ",
                   describe(sec.second), at_line(sec.first));
    for (const auto& kv : sec.second) {
      MT_INPUT_CHECK(kv.first.IsScalar(), origin, ": keys in section '", name, "' must be plain words, got ",
                     describe(kv.first), at_line(kv.first));
      const std::string key = name + "." + kv.first.Scalar();
      MT_INPUT_CHECK(seen.insert(key).second, origin, ": key '", brief(key), "' appears twice", at_line(kv.first));
      apply(cfg, key, kv.second, origin, at_line(kv.first));
    }
  }
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// One "--set key=value": the value is read as YAML, so lists and maps work for list keys.
void apply_override(Config& cfg, const std::string& item) {
  const std::string where = "--set '" + brief(item) + "'";
  const size_t eq = item.find('=');
  MT_INPUT_CHECK(eq != std::string::npos, where, ": expected key=value, e.g. --set train.lr=3e-4");
  const std::string key = trim(item.substr(0, eq));
  MT_INPUT_CHECK(!key.empty(), where, ": expected key=value with a key like train.lr before '='");
  YAML::Node value;
  try {
    value = YAML::Load(item.substr(eq + 1));
  } catch (const YAML::Exception& ex) {
    MT_INPUT_FAIL(where, ": the value is not valid YAML: ", ex.msg);
  }
  apply(cfg, key, value, where, "");
}

// Checks between keys, after every override is in. [DESIGN §6]
void check_cross(const Config& c, const std::string& origin) {
  check_model_dims(c.model, origin, ModelKeys::Yaml);
  // The dropless receive bound: 0 (= ep, the worst case) or ≥ 1 (the ranks together receive ep·T·k rows, so some
  // rank always receives ≥ T·k); it sizes nothing when a capacity factor bounds the buffers instead.
  const double f = c.moe.dropless_buffer_factor;
  MT_INPUT_CHECK(f == 0 || f >= 1, origin, ": key 'moe.dropless_buffer_factor' must be 0 (= parallel.ep, no bound "
                 "below the worst case) or >= 1 (some rank always receives at least T·k rows), got ", f);
  MT_INPUT_CHECK(f == 0 || c.moe.capacity_factor == 0, origin, ": key 'moe.dropless_buffer_factor' bounds dropless "
                 "routing only; with moe.capacity_factor ", c.moe.capacity_factor, " > 0 the capacity bounds the "
                 "receive buffers: remove the key or set moe.capacity_factor: 0");
  MT_INPUT_CHECK(c.upcycle.top_k <= c.upcycle.num_experts, origin,
                 ": key 'upcycle.top_k' must be <= upcycle.num_experts (", c.upcycle.num_experts, "), got ",
                 c.upcycle.top_k);
  for (const std::string* v : {&c.run.name, &c.run.dir})
    MT_INPUT_CHECK(std::none_of(v->begin(), v->end(), [](char ch) { return ch >= 0 && ch < 32; }), origin,
                   ": key '", v == &c.run.name ? "run.name" : "run.dir", "' holds a control character");
  MT_INPUT_CHECK(c.model.arch == Arch::Qwen3Moe ||
                     (c.model.mlp_only_layers.empty() && c.model.decoder_sparse_step == 1 &&
                      (c.model.moe_intermediate_size == 0 || c.model.moe_intermediate_size == c.model.intermediate_size)),
                 origin, ": keys 'model.mlp_only_layers', 'model.decoder_sparse_step' and 'model.moe_intermediate_size' "
                 "apply to model.arch: qwen3_moe; Mixtral's experts use model.intermediate_size in every layer");
  MT_INPUT_CHECK(!c.run.name.empty() || !c.run.dir.empty(), origin,
                 ": key 'run.name' is empty (run.dir would be runs/ itself); name the run or set run.dir");
  MT_INPUT_CHECK(c.train.max_loss_ratio == 0 || c.train.max_loss_ratio > 1, origin,
                 ": key 'train.max_loss_ratio' must be 0 (off) or > 1, got ", fmt_double(c.train.max_loss_ratio));
  MT_INPUT_CHECK(c.train.min_lr <= c.train.lr, origin, ": key 'train.min_lr' must be <= train.lr (",
                 fmt_double(c.train.lr), "), got ", fmt_double(c.train.min_lr));
  // A key that would do nothing is refused, not ignored: the eval keys need the eval data.
  // (Values, not `given`: a checkpoint's /meta config spells out every key with its default.)
  const std::pair<const char*, bool> eval_keys[] = {
      {"eval.every", c.eval.every != 0}, {"eval.batches", c.eval.batches != 0}, {"eval.at_start", c.eval.at_start}};
  for (const auto& [k, set] : eval_keys)
    MT_INPUT_CHECK(!c.eval.data.empty() || !set, origin, ": key '", k,
                   "' needs eval.data (a held-out token file, read like data.path); set eval.data or remove it");
}

}  // namespace

void check_model_dims(const ModelConfig& m, const std::string& origin, ModelKeys keys) {
  const bool y = keys == ModelKeys::Yaml;
  const char* heads = y ? "model.num_heads" : "num_attention_heads";
  const char* kv = y ? "model.num_kv_heads" : "num_key_value_heads";
  const char* hidden = y ? "model.hidden_size" : "hidden_size";
  const char* hd = y ? "model.head_dim" : "head_dim";
  const char* layers = y ? "model.num_layers" : "num_hidden_layers";
  const char* experts = y ? "model.num_experts" : "num_experts";
  const char* topk = y ? "model.top_k" : "num_experts_per_tok";
  const char* mlp_only = y ? "model.mlp_only_layers" : "mlp_only_layers";
  constexpr int kMaxCount = 65536;  // layers, heads, experts: far above any real model, bounds every loop
  for (const auto& [key, v] : {std::pair<const char*, int>{layers, m.num_layers}, {heads, m.num_heads},
                               {kv, m.num_kv_heads}, {experts, m.num_experts}})
    MT_INPUT_CHECK(v >= 1 && v <= kMaxCount, origin, ": key '", key, "' must be in 1..", kMaxCount, ", got ", v);
  // Tensors per model grow as layers x experts (3 per expert); 2^20 is ~70x the largest public MoE.
  MT_INPUT_CHECK(i64(m.num_layers) * m.num_experts <= (i64(1) << 20), origin, ": keys '", layers, "' (",
                 m.num_layers, ") x '", experts, "' (", m.num_experts, ") exceed the limit of 2^20 expert blocks");
  MT_INPUT_CHECK(m.top_k >= 1 && m.top_k <= m.num_experts, origin, ": key '", topk, "' must be <= ", experts,
                 " (", m.num_experts, "), got ", m.top_k);
  MT_INPUT_CHECK(m.num_heads % m.num_kv_heads == 0, origin, ": key '", heads, "' (", m.num_heads,
                 ") must be divisible by ", kv, ", got ", m.num_kv_heads);
  MT_INPUT_CHECK(m.head_dim > 0 || m.hidden_size % m.num_heads == 0, origin, ": key '", hidden, "' (",
                 m.hidden_size, ") must be divisible by ", heads, " (", m.num_heads, ") when ", hd,
                 " is not given; set ", hd, " or change the sizes");
  const int D = m.resolved_head_dim();
  MT_INPUT_CHECK(D % 2 == 0, origin, ": key '", hd, "' must be even (RoPE rotates pairs of dimensions), got ", D,
                 m.head_dim > 0 ? "" : std::string(" (") + hidden + " / " + heads + ")");
  for (int l : m.mlp_only_layers)
    MT_INPUT_CHECK(l >= 0 && l < m.num_layers, origin, ": key '", mlp_only, "' holds layer ", l, ", outside 0..",
                   m.num_layers - 1, " (", layers, " = ", m.num_layers, ")");
  // Parameter count in floating point (no overflow): embeddings, attention, norms, experts or dense MLP, head.
  const double H = m.hidden_size, V = m.vocab_size, NH = m.num_heads, NKV = m.num_kv_heads, E = m.num_experts;
  const double per_layer = H * D * (2 * NH + 2 * NKV) + 2 * H + 2.0 * D + E * H +
                           3.0 * H * std::max<double>({double(m.expert_width()) * E, double(m.intermediate_size)});
  const double params = V * H * (m.tie_word_embeddings ? 1 : 2) + H + per_layer * m.num_layers;
  MT_INPUT_CHECK(params <= double(1ull << 48), origin, ": the model sizes (", hidden, " ", m.hidden_size, ", ",
                 y ? "model.vocab_size" : "vocab_size", " ", m.vocab_size, ", ", layers, " ", m.num_layers, ", ",
                 experts, " ", m.num_experts, ", expert width ", m.expert_width(), ", ", hd, " ", D, ") give ",
                 params, " parameters, more than the limit of 2^48");
}

Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides,
                    const std::string& origin) {
  YAML::Node root;
  try {
    MT_INPUT_CHECK(yaml_documents(yaml_text) <= 1, origin,
                   ": holds 2 or more YAML documents (separated by ---); a run config is one document");
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& ex) {
    const std::string pos = ex.mark.is_null() ? std::string()
                                               : " at line " + std::to_string(ex.mark.line + 1) + ", column " +
                                                     std::to_string(ex.mark.column + 1);
    MT_INPUT_FAIL(origin, ": not valid YAML", pos, ": ", ex.msg);
  }
  Config cfg;
  cfg.source_path = origin;
  apply_document(cfg, root, origin);
  for (const std::string& item : overrides) apply_override(cfg, item);
  check_cross(cfg, overrides.empty() ? origin : origin + " (with --set overrides)");
  return cfg;
}

Config load_config(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  namespace fs = std::filesystem;
  std::error_code ec;
  MT_INPUT_CHECK(fs::exists(yaml_path, ec), "config file '", yaml_path, "' does not exist");
  MT_INPUT_CHECK(!fs::is_directory(yaml_path, ec), "config file '", yaml_path, "' is a directory, not a YAML file");
  // A FIFO would block the open, a device never ends: only regular files, and of a size a config can have.
  MT_INPUT_CHECK(fs::is_regular_file(yaml_path, ec), "config file '", yaml_path,
                 "' is not a regular file (a FIFO, device or socket); give a YAML file");
  const uintmax_t size = fs::file_size(yaml_path, ec);
  MT_INPUT_CHECK(!ec && size <= (uintmax_t(16) << 20), "config file '", yaml_path, "' has ", size,
                 " bytes; a run config is at most 16 MiB");
  std::ifstream in(yaml_path, std::ios::binary);
  MT_INPUT_CHECK(in.good(), "cannot read config file '", yaml_path, "': ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  MT_INPUT_CHECK(!in.bad(), "cannot read config file '", yaml_path, "': ", std::strerror(errno));
  return parse_config(text.str(), overrides, yaml_path);
}

std::vector<std::string> config_changes(const Config& from, const Config& to) {
  auto value = [](const Field& f, const Config& c) {
    YAML::Emitter e;
    e.SetMapFormat(YAML::Flow);
    e.SetSeqFormat(YAML::Flow);
    f.emit(e, c);
    return std::string(e.c_str());
  };
  std::vector<std::string> out;
  for (const Field& f : schema()) {
    const std::string a = value(f, from), b = value(f, to);
    if (a != b) out.push_back(f.key + ": " + a + " -> " + b);
  }
  return out;
}

std::string config_to_yaml(const Config& cfg) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  std::string section;
  for (const Field& f : schema()) {
    const std::string s = section_of(f.key);
    if (s != section) {
      if (!section.empty()) e << YAML::EndMap;
      e << YAML::Key << s << YAML::Value << YAML::BeginMap;
      section = s;
    }
    e << YAML::Key << leaf_of(f.key) << YAML::Value;
    f.emit(e, cfg);
  }
  if (!section.empty()) e << YAML::EndMap;
  e << YAML::EndMap;
  MT_CHECK(e.good(), "config_to_yaml: emitter failed: ", e.GetLastError());
  return std::string(e.c_str()) + "\n";
}

CommBackend resolve_comm_backend(const Config& cfg) {
  if (cfg.parallel.backend != CommBackend::Auto) return cfg.parallel.backend;
  return cfg.train.device == Device::Cuda ? CommBackend::Nccl : CommBackend::Mpi;
}

}  // namespace moe
