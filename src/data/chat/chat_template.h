// Owns the chat templates of moe-prep (DESIGN §6 C6.chat): rendering a conversation to the text of transformers' apply_chat_template for Mixtral-8x7B-Instruct-v0.1 and Qwen2.5-style ChatML, plus the character spans of the assistant replies that carry loss.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace moe {

class Tokenizer;

// One message of a conversation: role "system", "user" or "assistant"; content is plain text.
struct ChatMessage {
  std::string role;
  std::string content;
};

// [begin, end) byte offsets into RenderedChat::text.
struct CharSpan {
  size_t begin = 0, end = 0;
};

struct RenderedChat {
  std::string text;                 // what apply_chat_template(messages, tokenize=False, ...) returns
  std::vector<CharSpan> loss_spans;  // one per assistant reply, in order, disjoint (see ChatTemplate)
  // Where a marker the template itself inserts (BOS, EOS, <|im_start|>, <|im_end|>) begins. The text is cut
  // there when it is encoded in pieces (prep/doc_encoder.h); user content never adds anchors.
  std::vector<size_t> anchors;
};

// The two template families moe-prep renders. Each one is the Jinja template shipped with the model, rewritten
// as code for the cases below (string contents, roles system/user/assistant, no tools); DESIGN §6 C6.chat cites
// where the reference template text comes from.
//
// Mixtral  (mistralai/Mixtral-8x7B-Instruct-v0.1, its current template):
//   BOS, then per turn ' [INST] ' + user + ' [/INST]' and ' ' + assistant + EOS. An optional FIRST system
//   message is prepended to the first user message as system + '\n\n' + user (the template's behaviour; the
//   model has no system role). After it, roles must alternate user/assistant/user/...; any other order or role
//   raises in the template and is BadInput here. add_generation_prompt changes nothing (the template ignores it).
//   Loss span of a reply: ' ' + content + EOS (the space before the reply belongs to its first token).
// ChatML   (Qwen2.5-Instruct's template without tools; `chatml`):
//   '<|im_start|>' + role + '\n' + content + '<|im_end|>\n' per message; when the first message is not a system
//   message, the Qwen2.5 default system message is rendered first. add_generation_prompt appends
//   '<|im_start|>assistant\n'. Roles other than system/user/assistant are BadInput (the template renders tool
//   messages, which moe-prep does not support).
//   `chatml-plain` is the same without a default system message (the generic ChatML template).
//   Loss span of a reply: '\n' + content + '<|im_end|>' + '\n' after '<|im_start|>assistant', i.e. exactly
//   the {% generation %} block of TRL's Qwen2.5 training template (assistant_only_loss).
class ChatTemplate {
 public:
  enum class Family { Mixtral, ChatML };

  // bos/eos are the token texts the template renders (tokenizer_config.json bos_token / eos_token).
  static ChatTemplate mixtral(std::string bos, std::string eos);
  // default_system: the system message rendered when the conversation has none (nullopt: none).
  static ChatTemplate chatml(std::optional<std::string> default_system);
  // The Qwen2.5 default system message.
  static const char* qwen25_default_system();

  // By name: "mixtral", "chatml", "chatml-plain", or "auto" (from the template text in tokenizer_dir, see
  // recognize()). BadInput for another name, or for "auto" when the directory's template is missing or not
  // recognised (the message names the file and says to set the template explicitly). Mixtral takes BOS/EOS
  // from the tokenizer (BadInput when tokenizer_config.json names none).
  static ChatTemplate by_name(const std::string& name, const std::string& tokenizer_dir, const Tokenizer& tk);

  // The chat template text of an HF tokenizer directory: DIR/chat_template.jinja when present (transformers
  // writes it there), else tokenizer_config.json's "chat_template" (a string, or a list of {name, template}
  // from which "default" is taken). nullopt when there is none. `source` is set to the file it came from.
  static std::optional<std::string> read_template_text(const std::string& tokenizer_dir, std::string& source);

  // Which template a Jinja template text is: "mixtral" when it is the Mixtral-8x7B-Instruct-v0.1 form
  // (' [INST] ' with its spaces), "chatml" when it has <|im_start|> and the Qwen2.5 default system message,
  // "chatml-plain" for other <|im_start|> templates without thinking blocks; "" when none of these (Qwen3's
  // <think> templates, Mistral v3+ "[INST]" without spaces, Llama, ...).
  static std::string recognize(const std::string& template_text);

  // Renders messages (BadInput naming the message index when the template would raise or a role is not
  // supported, or when there are no messages).
  RenderedChat render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  Family family() const { return family_; }
  const std::string& name() const { return name_; }

 private:
  ChatTemplate() = default;
  RenderedChat render_mixtral(const std::vector<ChatMessage>& messages) const;
  RenderedChat render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  Family family_ = Family::ChatML;
  std::string name_;
  std::string bos_, eos_;                     // Mixtral
  std::optional<std::string> default_system_;  // ChatML
};

}  // namespace moe
