// Owns reading tokenizer.json / tokenizer_config.json into the pipeline parts, and every refusal of a component the C++ tokenizer does not implement (BadInput naming the file and the component).
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/tokenizer/tokenizer_impl.h"
#include "data/tokenizer/text.h"
#include "io/json_file.h"

namespace moe {

namespace {
using json = nlohmann::json;
using namespace tok;

struct Reader {
  const std::string& file;

  const json& key(const json& j, const char* k, const std::string& where) const {
    MT_INPUT_CHECK(j.contains(k), file, ": ", where, " has no '", k, "'");
    return j[k];
  }
  std::string str(const json& j, const char* k, const std::string& where) const {
    const json& v = key(j, k, where);
    MT_INPUT_CHECK(v.is_string(), file, ": ", where, ".", k, " must be a string, got ", json_brief(v));
    return v.get<std::string>();
  }
  bool flag(const json& j, const char* k, bool dflt, const std::string& where) const {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    MT_INPUT_CHECK(j[k].is_boolean(), file, ": ", where, ".", k, " must be true or false, got ", json_brief(j[k]));
    return j[k].get<bool>();
  }
  uint64_t count(const json& j, const char* k, uint64_t dflt, const std::string& where) const {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    MT_INPUT_CHECK(j[k].is_number_unsigned() || (j[k].is_number_integer() && j[k].get<int64_t>() >= 0), file, ": ",
                   where, ".", k, " must be a non-negative integer, got ", json_brief(j[k]));
    return j[k].get<uint64_t>();
  }
  std::string type(const json& j, const std::string& where) const {
    MT_INPUT_CHECK(j.is_object(), file, ": ", where, " must be an object, got ", json_brief(j));
    return str(j, "type", where);
  }
  const json& list(const json& j, const char* k, const std::string& where) const {
    const json& v = key(j, k, where);
    MT_INPUT_CHECK(v.is_array(), file, ": ", where, ".", k, " must be a list, got ", json_brief(v));
    return v;
  }
  char32_t one_char(const json& j, const char* k, const std::string& where) const {
    const std::string s = str(j, k, where);
    int len = 0;
    MT_INPUT_CHECK(!s.empty() && utf8_invalid_at(s) == std::string::npos && (utf8_at(s, 0, &len), size_t(len) == s.size()),
                   file, ": ", where, ".", k, " must be one character, got ", json_brief(j[k]));
    return utf8_at(s, 0, &len);
  }
  [[noreturn]] void unsupported(const std::string& what, const std::string& type, const char* supported) const {
    MT_INPUT_FAIL(file, ": ", what, " type '", type, "' is not supported (supported: ", supported, ")");
  }

  Pattern pattern(const json& j, const std::string& where) const {
    MT_INPUT_CHECK(j.is_object() && j.size() == 1 && (j.contains("String") || j.contains("Regex")), file, ": ", where,
                   " must be {\"String\": ...} or {\"Regex\": ...}, got ", json_brief(j));
    Pattern p;
    if (j.contains("String")) {
      p.literal = str(j, "String", where);
      MT_INPUT_CHECK(!p.literal.empty(), file, ": ", where, " is an empty string pattern, which is not supported");
    } else {
      p.regex = std::make_shared<const Regex>(str(j, "Regex", where), file + ": " + where);
    }
    return p;
  }

  PrependScheme scheme(const json& j, const std::string& where) const {
    // As the library's Metaspace deserializer: prepend_scheme defaults to "always"; a legacy
    // add_prefix_space false must come with prepend_scheme "never".
    PrependScheme s = PrependScheme::Always;
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string v = str(j, "prepend_scheme", where);
      if (v == "first") s = PrependScheme::First;
      else if (v == "never") s = PrependScheme::Never;
      else if (v == "always") s = PrependScheme::Always;
      else MT_INPUT_FAIL(file, ": ", where, ".prepend_scheme '", v, "' is not one of first, never, always");
    }
    if (j.contains("add_prefix_space") && !flag(j, "add_prefix_space", true, where))
      MT_INPUT_CHECK(s == PrependScheme::Never, file, ": ", where,
                     ": add_prefix_space false does not match prepend_scheme (the library refuses this file too)");
    return s;
  }

  void normalizer(const json& j, std::vector<NormStep>& out, const std::string& where) const {
    const std::string t = type(j, where);
    if (t == "Sequence") {
      const json& l = list(j, "normalizers", where);
      for (size_t i = 0; i < l.size(); ++i) normalizer(l[i], out, where + ".normalizers[" + std::to_string(i) + "]");
    } else if (t == "NFC") {
      out.push_back({NormKind::NFC, "", {}});
    } else if (t == "Prepend") {
      out.push_back({NormKind::Prepend, str(j, "prepend", where), {}});
    } else if (t == "Replace") {
      out.push_back({NormKind::Replace, str(j, "content", where), pattern(key(j, "pattern", where), where + ".pattern")});
    } else {
      unsupported(where, t, "NFC, Prepend, Replace, Sequence");
    }
  }

  void pre_tokenizer(const json& j, std::vector<PreStep>& out, const std::string& where) const {
    const std::string t = type(j, where);
    if (t == "Sequence") {
      const json& l = list(j, "pretokenizers", where);
      for (size_t i = 0; i < l.size(); ++i) pre_tokenizer(l[i], out, where + ".pretokenizers[" + std::to_string(i) + "]");
      return;
    }
    PreStep s{};
    if (t == "ByteLevel") {
      s.kind = PreKind::ByteLevel;
      s.add_prefix_space = flag(j, "add_prefix_space", true, where);
      s.use_regex = flag(j, "use_regex", true, where);
      if (s.use_regex) s.pattern.regex = gpt2_regex();
    } else if (t == "Split") {
      s.kind = PreKind::Split;
      s.pattern = pattern(key(j, "pattern", where), where + ".pattern");
      const std::string b = str(j, "behavior", where);
      if (b == "Removed") s.behavior = SplitBehavior::Removed;
      else if (b == "Isolated") s.behavior = SplitBehavior::Isolated;
      else if (b == "MergedWithPrevious") s.behavior = SplitBehavior::MergedWithPrevious;
      else if (b == "MergedWithNext") s.behavior = SplitBehavior::MergedWithNext;
      else if (b == "Contiguous") s.behavior = SplitBehavior::Contiguous;
      else MT_INPUT_FAIL(file, ": ", where, ".behavior '", b, "' is not a split behavior");
      s.invert = flag(j, "invert", false, where);
    } else if (t == "Metaspace") {
      s.kind = PreKind::Metaspace;
      utf8_append(s.replacement, one_char(j, "replacement", where));
      s.scheme = scheme(j, where);
      s.split = flag(j, "split", true, where);
      // "first" asks whether a split starts at byte 0 of the input; that is known exactly for the splits made
      // at added tokens, not after another pre-tokenizer has split them.
      MT_INPUT_CHECK(s.scheme != PrependScheme::First || out.empty(), file, ": ", where,
                     ": Metaspace with prepend_scheme 'first' after another pre-tokenizer is not supported");
    } else {
      unsupported(where, t, "ByteLevel, Split, Metaspace, Sequence");
    }
    out.push_back(std::move(s));
  }

  void decoder(const json& j, std::vector<DecStep>& out, const std::string& where) const {
    const std::string t = type(j, where);
    if (t == "Sequence") {
      const json& l = list(j, "decoders", where);
      for (size_t i = 0; i < l.size(); ++i) decoder(l[i], out, where + ".decoders[" + std::to_string(i) + "]");
      return;
    }
    DecStep s{};
    if (t == "ByteLevel") {
      s.kind = DecKind::ByteLevel;
    } else if (t == "Replace") {
      s.kind = DecKind::Replace;
      s.pattern = pattern(key(j, "pattern", where), where + ".pattern");
      s.content = str(j, "content", where);
    } else if (t == "ByteFallback") {
      s.kind = DecKind::ByteFallback;
    } else if (t == "Fuse") {
      s.kind = DecKind::Fuse;
    } else if (t == "Strip") {
      s.kind = DecKind::Strip;
      s.strip_char = one_char(j, "content", where);
      s.start = size_t(count(j, "start", 0, where));
      s.stop = size_t(count(j, "stop", 0, where));
    } else if (t == "Metaspace") {
      s.kind = DecKind::Metaspace;
      s.replacement = one_char(j, "replacement", where);
      s.scheme = scheme(j, where);
    } else {
      unsupported(where, t, "ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence");
    }
    out.push_back(std::move(s));
  }

  // Collects the TemplateProcessing steps of a post_processor (ByteLevel changes offsets only, not ids).
  void post_processor(const json& j, std::vector<const json*>& templates, const std::string& where) const {
    const std::string t = type(j, where);
    if (t == "Sequence") {
      const json& l = list(j, "processors", where);
      for (size_t i = 0; i < l.size(); ++i) post_processor(l[i], templates, where + ".processors[" + std::to_string(i) + "]");
    } else if (t == "TemplateProcessing") {
      templates.push_back(&j);
    } else if (t != "ByteLevel") {
      unsupported(where, t, "TemplateProcessing, ByteLevel, Sequence");
    }
  }

  std::vector<TemplatePiece> single_template(const json& j, const std::string& where) const {
    const json& single = list(j, "single", where);
    const json& specials = key(j, "special_tokens", where);
    MT_INPUT_CHECK(specials.is_object(), file, ": ", where, ".special_tokens must be an object");
    std::vector<TemplatePiece> out;
    bool has_a = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const json& p = single[i];
      const std::string pw = where + ".single[" + std::to_string(i) + "]";
      MT_INPUT_CHECK(p.is_object() && p.size() == 1 && (p.contains("Sequence") || p.contains("SpecialToken")), file,
                     ": ", pw, " must be {\"Sequence\": ...} or {\"SpecialToken\": ...}, got ", json_brief(p));
      TemplatePiece tp;
      if (p.contains("Sequence")) {
        const std::string id = str(p["Sequence"], "id", pw + ".Sequence");
        MT_INPUT_CHECK(id == "A", file, ": ", pw, " uses sequence '", id, "'; a single-sequence template holds only A");
        tp.is_sequence = true;
        has_a = true;
      } else {
        const std::string id = str(p["SpecialToken"], "id", pw + ".SpecialToken");
        MT_INPUT_CHECK(specials.contains(id), file, ": ", pw, " names special token '", id,
                       "', which is not in ", where, ".special_tokens");
        const json& ids = list(specials[id], "ids", where + ".special_tokens." + id);
        for (const json& v : ids) {
          MT_INPUT_CHECK(v.is_number_unsigned() && v.get<uint64_t>() <= 0x7FFFFFFFu, file, ": ", where,
                         ".special_tokens.", id, ".ids holds ", json_brief(v), ", not an id");
          tp.ids.push_back(v.get<uint32_t>());
        }
      }
      out.push_back(std::move(tp));
    }
    MT_INPUT_CHECK(has_a, file, ": ", where, ".single has no $A sequence");
    return out;
  }

  std::unique_ptr<Bpe> model(const json& j) const {
    const std::string where = "model";
    MT_INPUT_CHECK(j.is_object(), file, ": model must be an object");
    const std::string t = j.contains("type") ? str(j, "type", where) : (j.contains("merges") ? "BPE" : "?");
    if (t != "BPE") unsupported("model", t, "BPE");
    if (j.contains("dropout") && !j["dropout"].is_null())
      MT_INPUT_CHECK(j["dropout"].is_number() && j["dropout"].get<double>() == 0.0, file,
                     ": model.dropout = ", json_brief(j["dropout"]),
                     " is not supported (BPE dropout samples merges at random; allowed: null or 0)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (j.contains(k) && !j[k].is_null())
        MT_INPUT_CHECK(j[k].is_string() && j[k].get<std::string>().empty(), file, ": model.", k, " = ",
                       json_brief(j[k]), " is not supported (allowed: null)");
    BpeOptions opt;
    if (j.contains("unk_token") && !j["unk_token"].is_null()) opt.unk_token = str(j, "unk_token", where);
    opt.fuse_unk = flag(j, "fuse_unk", false, where);
    opt.byte_fallback = flag(j, "byte_fallback", false, where);
    opt.ignore_merges = flag(j, "ignore_merges", false, where);

    const json& v = key(j, "vocab", where);
    MT_INPUT_CHECK(v.is_object(), file, ": model.vocab must be an object of token: id");
    std::vector<std::pair<std::string, uint32_t>> vocab;
    vocab.reserve(v.size());
    for (auto it = v.begin(); it != v.end(); ++it) {
      MT_INPUT_CHECK(it.value().is_number_unsigned() || (it.value().is_number_integer() && it.value().get<int64_t>() >= 0),
                     file, ": model.vocab['", brief_text(it.key()), "'] must be a non-negative id, got ", json_brief(it.value()));
      MT_INPUT_CHECK(utf8_invalid_at(it.key()) == std::string::npos, file, ": model.vocab has a key that is not UTF-8");
      vocab.emplace_back(it.key(), it.value().get<uint32_t>());
    }
    const json& m = list(j, "merges", where);
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(m.size());
    for (size_t i = 0; i < m.size(); ++i) {
      const json& e = m[i];
      if (e.is_string()) {  // "a b" (merges.txt form); "#version" lines are skipped as the library does
        const std::string& s = e.get_ref<const std::string&>();
        if (s.rfind("#version", 0) == 0) continue;
        const size_t sp = s.find(' ');
        MT_INPUT_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, file, ": model.merges[",
                       i, "] = ", json_brief(e), " is not two tokens separated by one space");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {
        MT_INPUT_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), file, ": model.merges[",
                       i, "] = ", json_brief(e), " is neither \"a b\" nor [\"a\", \"b\"]");
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      }
    }
    return std::make_unique<Bpe>(vocab, merges, opt, file);
  }

  std::vector<AddedToken> added_tokens(const json& j) const {
    std::vector<AddedToken> out;
    if (j.is_null()) return out;
    MT_INPUT_CHECK(j.is_array(), file, ": added_tokens must be a list");
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      MT_INPUT_CHECK(j[i].is_object(), file, ": ", where, " must be an object");
      AddedToken t;
      t.content = str(j[i], "content", where);
      MT_INPUT_CHECK(utf8_invalid_at(t.content) == std::string::npos, file, ": ", where, ".content is not UTF-8");
      t.single_word = flag(j[i], "single_word", false, where);
      t.lstrip = flag(j[i], "lstrip", false, where);
      t.rstrip = flag(j[i], "rstrip", false, where);
      t.normalized = flag(j[i], "normalized", true, where);
      t.special = flag(j[i], "special", false, where);
      out.push_back(std::move(t));
    }
    return out;
  }
};

// bos_token / eos_token of tokenizer_config.json: a string, {"content": ...} or null.
std::optional<std::string> config_token(const json& c, const char* k, const std::string& file) {
  if (!c.contains(k) || c[k].is_null()) return std::nullopt;
  const json& v = c[k];
  if (v.is_string()) return v.get<std::string>();
  MT_INPUT_CHECK(v.is_object() && v.contains("content") && v["content"].is_string(), file, ": ", k,
                 " must be a string or {\"content\": ...}, got ", json_brief(v));
  return v["content"].get<std::string>();
}
}  // namespace

void load_tokenizer(Tokenizer::Impl& impl, const std::string& text, const std::string& config_text,
                    const std::string& dir) {
  impl.file = dir + "/tokenizer.json";
  const Reader r{impl.file};
  const json j = parse_json_text(text.data(), text.data() + text.size(), impl.file);
  MT_INPUT_CHECK(j.is_object(), impl.file, ": the top level must be an object");
  if (j.contains("version"))
    MT_INPUT_CHECK(j["version"] == "1.0", impl.file, ": version ", json_brief(j["version"]), " is not \"1.0\"");
  for (const char* k : {"truncation", "padding"})
    MT_INPUT_CHECK(!j.contains(k) || j[k].is_null(), impl.file, ": ", k, " = ", json_brief(j[k]),
                   " is not supported (allowed: null; moe-prep encodes whole texts)");
  MT_INPUT_CHECK(j.contains("model"), impl.file, ": no 'model'");
  impl.model = r.model(j["model"]);
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    impl.has_normalizer = true;
    r.normalizer(j["normalizer"], impl.normalizer, "normalizer");
  }
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
    r.pre_tokenizer(j["pre_tokenizer"], impl.pre, "pre_tokenizer");
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    std::vector<const json*> templates;
    r.post_processor(j["post_processor"], templates, "post_processor");
    MT_INPUT_CHECK(templates.size() <= 1, impl.file, ": post_processor holds ", templates.size(),
                   " TemplateProcessing steps; at most one is supported");
    if (!templates.empty()) impl.single = r.single_template(*templates[0], "post_processor (TemplateProcessing)");
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    impl.has_decoder = true;
    r.decoder(j["decoder"], impl.decoder, "decoder");
  }
  impl.added.build(r.added_tokens(j.contains("added_tokens") ? j["added_tokens"] : json()), *impl.model,
                   impl.has_normalizer ? &impl.normalizer : nullptr, impl.file);

  if (config_text.empty()) return;
  const std::string cfile = dir + "/tokenizer_config.json";
  const json c = parse_json_text(config_text.data(), config_text.data() + config_text.size(), cfile);
  MT_INPUT_CHECK(c.is_object(), cfile, ": the top level must be an object");
  auto id_of = [&](const std::optional<std::string>& t, const char* k) -> std::optional<Tokenizer::Id> {
    if (!t) return std::nullopt;
    const uint32_t* id = impl.added.find(*t);
    if (!id) id = impl.model->find(*t);
    MT_INPUT_CHECK(id, cfile, ": ", k, " '", *t, "' is not in the vocabulary of ", impl.file);
    return *id;
  };
  impl.bos = id_of(config_token(c, "bos_token", cfile), "bos_token");
  impl.eos = id_of(config_token(c, "eos_token", cfile), "eos_token");
  const JsonKeys k{c, cfile};
  if (k.has("add_bos_token")) impl.add_bos = k.get_bool("add_bos_token", false);
  if (k.has("add_eos_token")) impl.add_eos = k.get_bool("add_eos_token", false);
}

}  // namespace moe
