// Owns reading one input line of `moe-prep build` (formats text, jsonl, chat) into a document and encoding it (DESIGN §6 C6.prep).
#pragma once
#include <string>
#include <string_view>

#include "data/chat/chat_template.h"
#include "data/prep/doc_encoder.h"

namespace moe {

enum class InputFormat { Text, Jsonl, Chat };

// "text" | "jsonl" | "chat" (BadInput otherwise).
InputFormat parse_input_format(const std::string& name);
const char* input_format_name(InputFormat f);

// Whether the line holds no document (skipped without a report): empty for text, only spaces/tabs/'\r' for the
// JSON formats.
bool is_blank_line(InputFormat f, std::string_view line);

// contract: C6.prep
// Parses `line` and encodes its document into `out`. Lines:
//   text   the line itself (valid UTF-8) is a plain document
//   jsonl  {"text": s} a plain document; {"question": q, "answer": a} or {"prompt": p, "completion": c} a pair,
//          rendered as the chat [user q, assistant a] when `tpl` is set, else as the text p + c (DocEncoder::pair)
//   chat   {"messages": [{"role": r, "content": s}, ...]} rendered by `tpl` (required)
// Other keys are ignored. BadInput saying what is wrong with the line when it is malformed (not JSON, no or
// ambiguous document keys, a non-string value, an empty or invalid conversation, invalid UTF-8, a loss span
// that is not on token boundaries).
void encode_line(InputFormat f, std::string_view line, const ChatTemplate* tpl, const DocEncoder& enc,
                 EncodedDoc& out);

}  // namespace moe
