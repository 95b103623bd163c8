// Owns moe::Tokenizer: loading a directory and running encode (added tokens → normalizer → pre-tokenizer → BPE → template) and decode (ids → tokens → decoder) as the `tokenizers` library does.
#include "data/tokenizer/tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "data/tokenizer/file_text.h"
#include "data/tokenizer/text.h"
#include "data/tokenizer/tokenizer_impl.h"

namespace moe {

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  std::string text, config;
  MT_INPUT_CHECK(tok::read_regular_file(dir + "/tokenizer.json", text), "cannot read ", dir,
                 "/tokenizer.json: not a regular file (--tokenizer names an HF tokenizer directory)");
  tok::read_regular_file(dir + "/tokenizer_config.json", config);  // optional: BOS/EOS metadata only
  return from_json(text, config, dir);
}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& config_json,
                               const std::string& name) {
  auto impl = std::make_unique<Impl>();
  load_tokenizer(*impl, tokenizer_json, config_json, name);
  return Tokenizer(std::move(impl));
}

// contract: C6.tokenizer
void Tokenizer::encode(std::string_view text, bool add_special_tokens, std::vector<Id>& ids) const {
  const Impl& m = *impl_;
  const size_t bad = tok::utf8_invalid_at(text);
  MT_INPUT_CHECK(bad == std::string_view::npos, "text is not valid UTF-8 (byte ", bad, ")");
  // 1. added tokens that match the raw text; 2. normalize the rest, then added tokens matching normalized text.
  std::vector<tok::Piece> raw, pieces;
  m.added.split(text, false, true, raw);
  for (tok::Piece& p : raw) {
    if (p.token >= 0) {
      pieces.push_back(std::move(p));
      continue;
    }
    if (m.has_normalizer) tok::normalize(m.normalizer, p.text);
    m.added.split(p.text, true, p.at_origin, pieces);
  }
  // 3. pre-tokenize and run the model on every split no added token decided.
  tok::pre_tokenize(m.pre, pieces);
  const size_t base = ids.size();
  for (const tok::Piece& p : pieces) {
    if (p.token >= 0) ids.push_back(Id(p.token));
    else m.model->tokenize(p.text, ids);
  }
  // 4. post-processor template (special tokens around $A) when asked for.
  if (!add_special_tokens || m.single.empty()) return;
  std::vector<Id> seq(ids.begin() + std::ptrdiff_t(base), ids.end());
  ids.resize(base);
  for (const tok::TemplatePiece& tp : m.single) {
    if (tp.is_sequence) ids.insert(ids.end(), seq.begin(), seq.end());
    else ids.insert(ids.end(), tp.ids.begin(), tp.ids.end());
  }
}

std::vector<Tokenizer::Id> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<Id> ids;
  encode(text, add_special_tokens, ids);
  return ids;
}

Tokenizer::Affixes Tokenizer::special_affixes() const {
  Affixes a;
  bool seen_sequence = false;
  for (const tok::TemplatePiece& tp : impl_->single) {
    if (tp.is_sequence) {
      seen_sequence = true;
      continue;
    }
    std::vector<Id>& side = seen_sequence ? a.after : a.before;
    side.insert(side.end(), tp.ids.begin(), tp.ids.end());
  }
  return a;
}

// contract: C6.tokenizer
std::string Tokenizer::decode(const std::vector<Id>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (Id id : ids) {
    std::string_view t;
    if (const std::string* a = m.added.text_of(id)) t = *a;
    else if (const std::string_view* v = m.model->token(id)) t = *v;
    else continue;
    if (skip_special_tokens && m.added.is_special(t)) continue;
    tokens.emplace_back(t);
  }
  std::string out;
  if (m.has_decoder) {
    tok::decode_chain(m.decoder, tokens);
    for (const std::string& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
  }
  return out;
}

size_t Tokenizer::vocab_size() const {
  return std::max<size_t>(impl_->model->id_bound(), impl_->added.max_id_plus_one());
}

std::optional<Tokenizer::Id> Tokenizer::token_to_id(std::string_view token) const {
  if (const uint32_t* a = impl_->added.find(token)) return *a;
  if (const uint32_t* v = impl_->model->find(token)) return *v;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(Id id) const {
  if (const std::string* a = impl_->added.text_of(id)) return *a;
  if (const std::string_view* v = impl_->model->token(id)) return std::string(*v);
  return std::nullopt;
}

std::optional<Tokenizer::Id> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<Tokenizer::Id> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<bool> Tokenizer::add_bos() const { return impl_->add_bos; }
std::optional<bool> Tokenizer::add_eos() const { return impl_->add_eos; }

}  // namespace moe
