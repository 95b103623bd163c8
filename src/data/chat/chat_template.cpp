// Owns rendering conversations with the Mixtral and ChatML chat templates and choosing a template by name or from an HF tokenizer directory (DESIGN §6 C6.chat).
#include "data/chat/chat_template.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/tokenizer/file_text.h"
#include "data/tokenizer/tokenizer.h"

namespace moe {

namespace {

bool has(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

const char* kImStart = "<|im_start|>";
const char* kImEnd = "<|im_end|>";

}  // namespace

const char* ChatTemplate::qwen25_default_system() {
  return "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
}

ChatTemplate ChatTemplate::mixtral(std::string bos, std::string eos) {
  ChatTemplate t;
  t.family_ = Family::Mixtral;
  t.name_ = "mixtral";
  t.bos_ = std::move(bos);
  t.eos_ = std::move(eos);
  return t;
}

ChatTemplate ChatTemplate::chatml(std::optional<std::string> default_system) {
  ChatTemplate t;
  t.family_ = Family::ChatML;
  t.name_ = default_system ? "chatml" : "chatml-plain";
  t.default_system_ = std::move(default_system);
  return t;
}

std::optional<std::string> ChatTemplate::read_template_text(const std::string& dir, std::string& source) {
  std::string text;
  source = dir + "/chat_template.jinja";
  if (tok::read_regular_file(source, text)) return text;
  source = dir + "/tokenizer_config.json";
  if (!tok::read_regular_file(source, text)) return std::nullopt;
  nlohmann::json c;
  try {
    c = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    MT_INPUT_FAIL(source, ": not valid JSON (", e.what(), ")");
  }
  if (!c.is_object() || !c.contains("chat_template") || c["chat_template"].is_null()) return std::nullopt;
  const nlohmann::json& t = c["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  // The older multi-template form: [{"name": "default", "template": "..."}, {"name": "tool_use", ...}].
  if (t.is_array()) {
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
    MT_INPUT_FAIL(source, ": chat_template is a list without a {\"name\": \"default\", \"template\": ...} entry");
  }
  MT_INPUT_FAIL(source, ": chat_template must be a string or a list of {name, template}, got ", t.type_name());
}

std::string ChatTemplate::recognize(const std::string& t) {
  if (has(t, "[INST]") && has(t, "[/INST]") && has(t, "' [INST] '")) return "mixtral";
  if (has(t, kImStart) && !has(t, "<think>") && !has(t, "enable_thinking"))
    return has(t, qwen25_default_system()) ? "chatml" : "chatml-plain";
  return "";
}

ChatTemplate ChatTemplate::by_name(const std::string& name_in, const std::string& dir, const Tokenizer& tk) {
  std::string name = name_in;
  if (name == "auto") {
    std::string source;
    const std::optional<std::string> text = read_template_text(dir, source);
    MT_INPUT_CHECK(text, dir, "/tokenizer_config.json: no chat_template (nor ", dir,
                   "/chat_template.jinja); set the template explicitly with --chat-template mixtral|chatml|chatml-plain");
    name = recognize(*text);
    MT_INPUT_CHECK(!name.empty(), source, ": chat_template is not one moe-prep recognises (the Mixtral-8x7B-Instruct-v0.1 "
                   "' [INST] ' template, or ChatML with <|im_start|> and no <think> blocks); set the template "
                   "explicitly with --chat-template mixtral|chatml|chatml-plain");
  }
  if (name == "mixtral") {
    const auto bos = tk.bos_id(), eos = tk.eos_id();
    MT_INPUT_CHECK(bos && eos, dir, "/tokenizer_config.json: the mixtral chat template needs bos_token and eos_token");
    return mixtral(*tk.id_to_token(*bos), *tk.id_to_token(*eos));
  }
  if (name == "chatml") return chatml(std::string(qwen25_default_system()));
  if (name == "chatml-plain") return chatml(std::nullopt);
  MT_INPUT_FAIL("--chat-template '", name, "' is not known (allowed: auto, mixtral, chatml, chatml-plain)");
}

RenderedChat ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  MT_INPUT_CHECK(!messages.empty(), "the conversation has no messages");
  return family_ == Family::Mixtral ? render_mixtral(messages) : render_chatml(messages, add_generation_prompt);
}

// contract: C6.chat (Mixtral-8x7B-Instruct-v0.1: system folded into the first user turn, strict alternation)
RenderedChat ChatTemplate::render_mixtral(const std::vector<ChatMessage>& m) const {
  RenderedChat r;
  const bool has_system = m[0].role == "system";
  const size_t first = has_system ? 1 : 0;
  r.anchors.push_back(0);
  r.text = bos_;
  for (size_t i = first; i < m.size(); ++i) {
    const size_t k = i - first;  // index after the optional system message
    const std::string& role = m[i].role;
    MT_INPUT_CHECK((role == "user") == (k % 2 == 0), "messages[", i, "] has role '", role,
                   "': after the optional system message, roles must alternate user/assistant/user/... "
                   "(the Mixtral template raises)");
    if (role == "user") {
      r.text += " [INST] ";
      if (k == 0 && has_system) r.text += m[0].content + "\n\n";
      r.text += m[i].content;
      r.text += " [/INST]";
    } else if (role == "assistant") {
      CharSpan s;
      s.begin = r.text.size();
      r.text += ' ';
      r.text += m[i].content;
      r.anchors.push_back(r.text.size());
      r.text += eos_;
      s.end = r.text.size();
      r.loss_spans.push_back(s);
    } else {
      MT_INPUT_FAIL("messages[", i, "] has role '", role, "': the Mixtral template supports only user and assistant "
                    "roles after an optional first system message (it raises)");
    }
  }
  return r;
}

// contract: C6.chat (Qwen2.5 ChatML without tools; loss span = TRL's {% generation %} block)
RenderedChat ChatTemplate::render_chatml(const std::vector<ChatMessage>& m, bool add_generation_prompt) const {
  RenderedChat r;
  auto turn = [&](const std::string& role, const std::string& content, bool loss) {
    r.anchors.push_back(r.text.size());
    r.text += kImStart;
    r.text += role;
    CharSpan s;
    s.begin = r.text.size();
    r.text += '\n';
    r.text += content;
    r.anchors.push_back(r.text.size());
    r.text += kImEnd;
    r.text += '\n';
    s.end = r.text.size();
    if (loss) r.loss_spans.push_back(s);
  };
  if (m[0].role != "system" && default_system_) turn("system", *default_system_, false);
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string& role = m[i].role;
    MT_INPUT_CHECK(role == "system" || role == "user" || role == "assistant", "messages[", i, "] has role '", role,
                   "': moe-prep renders only system, user and assistant messages");
    turn(role, m[i].content, role == "assistant");
  }
  if (add_generation_prompt) {
    r.anchors.push_back(r.text.size());
    r.text += kImStart;
    r.text += "assistant\n";
  }
  return r;
}

}  // namespace moe
