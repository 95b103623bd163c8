// Owns parsing `moe-prep build` input lines (text, jsonl, chat) into documents and handing them to DocEncoder (DESIGN §6 C6.prep).
#include "data/prep/records.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "data/tokenizer/text.h"

namespace moe {

namespace {

using json = nlohmann::json;

const std::string& string_at(const json& j, const char* key, const char* where) {
  const json& v = j[key];
  MT_INPUT_CHECK(v.is_string(), where, "\"", key, "\" must be a string, got ", v.type_name());
  return v.get_ref<const std::string&>();
}

std::vector<ChatMessage> messages_of(const json& j) {
  const json& ms = j["messages"];
  MT_INPUT_CHECK(ms.is_array(), "\"messages\" must be an array, got ", ms.type_name());
  MT_INPUT_CHECK(!ms.empty(), "\"messages\" is empty");
  std::vector<ChatMessage> out;
  out.reserve(ms.size());
  for (size_t i = 0; i < ms.size(); ++i) {
    const json& m = ms[i];
    MT_INPUT_CHECK(m.is_object(), "messages[", i, "] must be an object, got ", m.type_name());
    MT_INPUT_CHECK(m.contains("role") && m["role"].is_string(), "messages[", i, "] needs a string \"role\"");
    MT_INPUT_CHECK(m.contains("content") && m["content"].is_string(), "messages[", i,
                   "] needs a string \"content\" (got ", m.contains("content") ? m["content"].type_name() : "none",
                   "; content lists and tool calls are not supported)");
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

}  // namespace

InputFormat parse_input_format(const std::string& name) {
  if (name == "text") return InputFormat::Text;
  if (name == "jsonl") return InputFormat::Jsonl;
  if (name == "chat") return InputFormat::Chat;
  MT_INPUT_FAIL("--format '", name, "' is not known (allowed: text, jsonl, chat)");
}

const char* input_format_name(InputFormat f) {
  return f == InputFormat::Text ? "text" : f == InputFormat::Jsonl ? "jsonl" : "chat";
}

bool is_blank_line(InputFormat f, std::string_view line) {
  if (f == InputFormat::Text) return line.empty();
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

void encode_line(InputFormat f, std::string_view line, const ChatTemplate* tpl, const DocEncoder& enc,
                 EncodedDoc& out) {
  if (f == InputFormat::Text) {
    const size_t bad = tok::utf8_invalid_at(line);
    MT_INPUT_CHECK(bad == std::string_view::npos, "the line is not valid UTF-8 (byte ", bad, ")");
    enc.plain(line, out);
    return;
  }
  json j;
  try {
    j = json::parse(line.begin(), line.end());
  } catch (const json::exception&) {
    MT_INPUT_FAIL("the line is not JSON (each line must be one JSON object)");
  }
  MT_INPUT_CHECK(j.is_object(), "the line is JSON ", j.type_name(), ", not an object");
  if (f == InputFormat::Chat) {
    MT_INPUT_CHECK(j.contains("messages"), "no \"messages\" (--format chat lines are {\"messages\": [...]})");
    MT_CHECK(tpl);
    enc.chat(tpl->render(messages_of(j), false), out);
    return;
  }
  const bool text = j.contains("text"), qa = j.contains("question") || j.contains("answer"),
             pc = j.contains("prompt") || j.contains("completion");
  MT_INPUT_CHECK(int(text) + int(qa) + int(pc) == 1,
                 text || qa || pc ? "ambiguous: more than one of \"text\", {\"question\", \"answer\"}, {\"prompt\", "
                                    "\"completion\"}"
                                  : "no document: expected \"text\", {\"question\", \"answer\"} or {\"prompt\", "
                                    "\"completion\"}");
  if (text) {
    enc.plain(string_at(j, "text", ""), out);
    return;
  }
  const char* pk = qa ? "question" : "prompt";
  const char* ck = qa ? "answer" : "completion";
  MT_INPUT_CHECK(j.contains(pk) && j.contains(ck), "\"", qa ? "question" : "prompt", "\" and \"", ck,
                 "\" come together; one is missing");
  const std::string& p = string_at(j, pk, "");
  const std::string& c = string_at(j, ck, "");
  if (tpl) enc.chat(tpl->render({{"user", p}, {"assistant", c}}, false), out);
  else enc.pair(p, c, out);
}

}  // namespace moe
