// Owns the unit tests of src/data/chat and src/data/prep (DESIGN §6 C6.chat, C6.prep): template text and refusals, loss spans to token positions (pieces, prefix fallback, refusal), document masks, the token files and `moe-prep build` reports.
// contract: C6.chat C6.prep
// Expected template texts were produced by transformers 5.24 apply_chat_template with the reference templates of
// tests/oracle/chat_refs.py; expected ids and masks by the `tokenizers` library (0.23) from the JSON below (mask =
// tokens whose offsets lie inside the loss spans). The oracles tests/oracle/test_chat_template.py and
// test_prep.py cover trained tokenizers, thousands of conversations and the command line.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/chat/chat_template.h"
#include "data/prep/build.h"
#include "data/prep/doc_encoder.h"
#include "data/prep/line_reader.h"
#include "data/prep/records.h"
#include "data/prep/token_files.h"
#include "data/tokenizer/tokenizer.h"

namespace {

using Ids = std::vector<moe::Tokenizer::Id>;
using Mask = std::vector<uint8_t>;
using moe::ChatMessage;
using moe::ChatTemplate;

// Character-level BPE over printable ASCII, '\n' and U+2581, merges hi, yo, IN, ST, INST; <s>, </s>, <|im_start|>,
// <|im_end|> are special added tokens (ids 0..3). No normalizer or pre-tokenizer.
const char* kChars = R"JSON({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 2, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 3, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}], "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": {"<s>": 0, "</s>": 1, "<|im_start|>": 2, "<|im_end|>": 3, " ": 4, "!": 5, "\"": 6, "#": 7, "$": 8, "%": 9, "&": 10, "'": 11, "(": 12, ")": 13, "*": 14, "+": 15, ",": 16, "-": 17, ".": 18, "/": 19, "0": 20, "1": 21, "2": 22, "3": 23, "4": 24, "5": 25, "6": 26, "7": 27, "8": 28, "9": 29, ":": 30, ";": 31, "<": 32, "=": 33, ">": 34, "?": 35, "@": 36, "A": 37, "B": 38, "C": 39, "D": 40, "E": 41, "F": 42, "G": 43, "H": 44, "I": 45, "J": 46, "K": 47, "L": 48, "M": 49, "N": 50, "O": 51, "P": 52, "Q": 53, "R": 54, "S": 55, "T": 56, "U": 57, "V": 58, "W": 59, "X": 60, "Y": 61, "Z": 62, "[": 63, "\\": 64, "]": 65, "^": 66, "_": 67, "`": 68, "a": 69, "b": 70, "c": 71, "d": 72, "e": 73, "f": 74, "g": 75, "h": 76, "i": 77, "j": 78, "k": 79, "l": 80, "m": 81, "n": 82, "o": 83, "p": 84, "q": 85, "r": 86, "s": 87, "t": 88, "u": 89, "v": 90, "w": 91, "x": 92, "y": 93, "z": 94, "{": 95, "|": 96, "}": 97, "~": 98, "\n": 99, "\u2581": 100, "hi": 101, "yo": 102, "IN": 103, "ST": 104, "INST": 105}, "merges": [["h", "i"], ["y", "o"], ["I", "N"], ["S", "T"], ["IN", "ST"]]}})JSON";
// kChars plus the merge "t" + "\n", which crosses ChatML's reply boundary "<|im_start|>assistant" | "\n...".
const char* kCross = R"JSON({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 2, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 3, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}], "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": {"<s>": 0, "</s>": 1, "<|im_start|>": 2, "<|im_end|>": 3, " ": 4, "!": 5, "\"": 6, "#": 7, "$": 8, "%": 9, "&": 10, "'": 11, "(": 12, ")": 13, "*": 14, "+": 15, ",": 16, "-": 17, ".": 18, "/": 19, "0": 20, "1": 21, "2": 22, "3": 23, "4": 24, "5": 25, "6": 26, "7": 27, "8": 28, "9": 29, ":": 30, ";": 31, "<": 32, "=": 33, ">": 34, "?": 35, "@": 36, "A": 37, "B": 38, "C": 39, "D": 40, "E": 41, "F": 42, "G": 43, "H": 44, "I": 45, "J": 46, "K": 47, "L": 48, "M": 49, "N": 50, "O": 51, "P": 52, "Q": 53, "R": 54, "S": 55, "T": 56, "U": 57, "V": 58, "W": 59, "X": 60, "Y": 61, "Z": 62, "[": 63, "\\": 64, "]": 65, "^": 66, "_": 67, "`": 68, "a": 69, "b": 70, "c": 71, "d": 72, "e": 73, "f": 74, "g": 75, "h": 76, "i": 77, "j": 78, "k": 79, "l": 80, "m": 81, "n": 82, "o": 83, "p": 84, "q": 85, "r": 86, "s": 87, "t": 88, "u": 89, "v": 90, "w": 91, "x": 92, "y": 93, "z": 94, "{": 95, "|": 96, "}": 97, "~": 98, "\n": 99, "\u2581": 100, "hi": 101, "yo": 102, "IN": 103, "ST": 104, "INST": 105, "t\n": 106}, "merges": [["h", "i"], ["y", "o"], ["I", "N"], ["S", "T"], ["IN", "ST"], ["t", "\n"]]}})JSON";
// SentencePiece-style (Prepend U+2581 + Replace ' ' by U+2581), no added tokens: "</s>" is plain text.
const char* kPrepend = R"JSON({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}, "pre_tokenizer": null, "post_processor": null, "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": {" ": 0, "!": 1, "\"": 2, "#": 3, "$": 4, "%": 5, "&": 6, "'": 7, "(": 8, ")": 9, "*": 10, "+": 11, ",": 12, "-": 13, ".": 14, "/": 15, "0": 16, "1": 17, "2": 18, "3": 19, "4": 20, "5": 21, "6": 22, "7": 23, "8": 24, "9": 25, ":": 26, ";": 27, "<": 28, "=": 29, ">": 30, "?": 31, "@": 32, "A": 33, "B": 34, "C": 35, "D": 36, "E": 37, "F": 38, "G": 39, "H": 40, "I": 41, "J": 42, "K": 43, "L": 44, "M": 45, "N": 46, "O": 47, "P": 48, "Q": 49, "R": 50, "S": 51, "T": 52, "U": 53, "V": 54, "W": 55, "X": 56, "Y": 57, "Z": 58, "[": 59, "\\": 60, "]": 61, "^": 62, "_": 63, "`": 64, "a": 65, "b": 66, "c": 67, "d": 68, "e": 69, "f": 70, "g": 71, "h": 72, "i": 73, "j": 74, "k": 75, "l": 76, "m": 77, "n": 78, "o": 79, "p": 80, "q": 81, "r": 82, "s": 83, "t": 84, "u": 85, "v": 86, "w": 87, "x": 88, "y": 89, "z": 90, "{": 91, "|": 92, "}": 93, "~": 94, "\n": 95, "\u2581": 96, "hi": 97, "yo": 98, "IN": 99, "ST": 100, "INST": 101, "\u2581h": 102, "\u2581hi": 103}, "merges": [["h", "i"], ["y", "o"], ["I", "N"], ["S", "T"], ["IN", "ST"], ["\u2581", "h"], ["\u2581h", "i"]]}})JSON";

moe::Tokenizer tok(const char* json, const char* config = "") { return moe::Tokenizer::from_json(json, config, "unit"); }

std::vector<ChatMessage> conv_a() {
  return {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "2+2?"}, {"assistant", "4"}};
}

std::string bad_input(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const moe::Error& e) {
    EXPECT_EQ(e.kind(), moe::ErrorKind::BadInput) << e.what();
    return e.what();
  }
  return "";
}

TEST(ChatTemplate, MixtralTextAsTransformers_C6_chat) {
  const ChatTemplate t = ChatTemplate::mixtral("<s>", "</s>");
  for (bool gen : {false, true}) {  // the Mixtral template ignores add_generation_prompt
    EXPECT_EQ(t.render(conv_a(), gen).text, "<s> [INST] Be brief.\n\nHi [/INST] Hello!</s> [INST] 2+2? [/INST] 4</s>");
    EXPECT_EQ(t.render({{"user", " x [/INST] </s>"}}, gen).text, "<s> [INST]  x [/INST] </s> [/INST]");
    EXPECT_EQ(t.render({{"user", "q"}, {"assistant", ""}}, gen).text, "<s> [INST] q [/INST] </s>");
  }
  const moe::RenderedChat r = t.render(conv_a(), false);
  ASSERT_EQ(r.loss_spans.size(), 2u);
  EXPECT_EQ(r.text.substr(r.loss_spans[0].begin, r.loss_spans[0].end - r.loss_spans[0].begin), " Hello!</s>");
  EXPECT_EQ(r.text.substr(r.loss_spans[1].begin, r.loss_spans[1].end - r.loss_spans[1].begin), " 4</s>");
}

TEST(ChatTemplate, MixtralRefusesWhatTheTemplateRaisesOn_C6_chat) {
  const ChatTemplate t = ChatTemplate::mixtral("<s>", "</s>");
  const std::vector<std::vector<ChatMessage>> raises = {
      {{"assistant", "a"}}, {{"user", "u"}, {"user", "v"}}, {{"user", "u"}, {"system", "s"}},
      {{"system", "s"}, {"system", "s"}, {"user", "u"}}, {{"tool", "t"}}, {}};
  for (const auto& m : raises) EXPECT_NE(bad_input([&] { t.render(m, false); }), "") << m.size();
}

TEST(ChatTemplate, ChatMLTextAsTransformers_C6_chat) {
  const ChatTemplate qwen = ChatTemplate::chatml(std::string(ChatTemplate::qwen25_default_system()));
  const ChatTemplate plain = ChatTemplate::chatml(std::nullopt);
  const std::string a = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                        "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n";
  EXPECT_EQ(qwen.render(conv_a(), false).text, a);
  EXPECT_EQ(plain.render(conv_a(), false).text, a);
  EXPECT_EQ(qwen.render(conv_a(), true).text, a + "<|im_start|>assistant\n");
  EXPECT_EQ(qwen.render({{"user", "q"}, {"assistant", ""}}, true).text,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(plain.render({{"user", " x [/INST] </s>"}}, true).text,
            "<|im_start|>user\n x [/INST] </s><|im_end|>\n<|im_start|>assistant\n");
  const moe::RenderedChat r = plain.render(conv_a(), true);  // TRL's generation block: '\n' + reply + '<|im_end|>\n'
  ASSERT_EQ(r.loss_spans.size(), 2u);
  EXPECT_EQ(r.text.substr(r.loss_spans[0].begin, r.loss_spans[0].end - r.loss_spans[0].begin), "\nHello!<|im_end|>\n");
  EXPECT_EQ(r.text.substr(r.loss_spans[1].begin, r.loss_spans[1].end - r.loss_spans[1].begin), "\n4<|im_end|>\n");
  EXPECT_NE(bad_input([&] { plain.render({{"tool", "t"}}, false); }), "");
}

TEST(ChatTemplate, RecognisesTemplateFamilies_C6_chat) {
  EXPECT_EQ(ChatTemplate::recognize("{{- ' [INST] ' + message['content'] + ' [/INST]' }}"), "mixtral");
  EXPECT_EQ(ChatTemplate::recognize("{{- '[INST]' + m + '[/INST]' }}"), "");  // Mistral v3+: no spaces
  EXPECT_EQ(ChatTemplate::recognize("'<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                                    "assistant.<|im_end|>'"), "chatml");
  EXPECT_EQ(ChatTemplate::recognize("{{'<|im_start|>' + message['role']}}"), "chatml-plain");
  EXPECT_EQ(ChatTemplate::recognize("{{'<|im_start|>'}}<think>"), "");  // Qwen3 thinking
  EXPECT_EQ(ChatTemplate::recognize("<|start_header_id|>"), "");
}

// Pieces cut at the template's special markers give the whole text's ids; the mask follows the spans.
TEST(DocEncoder, ChatMaskFromPieces_C6_prep) {
  const moe::Tokenizer t = tok(kChars);
  const moe::RenderedChat r = ChatTemplate::chatml(std::nullopt).render({{"user", "hi"}, {"assistant", "yo"}}, false);
  moe::EncodedDoc d;
  moe::DocEncoder(t, true).chat(r, d);
  EXPECT_EQ(d.ids, (Ids{2, 89, 87, 73, 86, 99, 101, 3, 99, 2, 69, 87, 87, 77, 87, 88, 69, 82, 88, 99, 102, 3, 99}));
  EXPECT_EQ(d.mask, (Mask{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_FALSE(d.used_prefix_fallback);
  moe::DocEncoder(t, false).chat(r, d);  // without --mask-prompt every token counts
  EXPECT_EQ(d.mask, Mask(23, 1));
  const ChatTemplate mx = ChatTemplate::mixtral("<s>", "</s>");
  moe::DocEncoder(t, true).chat(mx.render({{"user", "hi"}, {"assistant", "yo"}, {"user", "hi"}, {"assistant", "yo yo"}}, false), d);
  EXPECT_EQ(d.ids, (Ids{0, 4, 63, 105, 65, 4, 101, 4, 63, 19, 105, 65, 4, 102, 1, 4, 63, 105, 65, 4, 101, 4, 63, 19,
                        105, 65, 4, 102, 4, 102, 1}));
  EXPECT_EQ(d.mask, (Mask{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_FALSE(d.used_prefix_fallback);
}

// When "</s>" is not a special token, a piece starting there gets its own U+2581 prefix and the pieces differ from
// the whole text: the prefixes of the whole text give the token positions instead.
TEST(DocEncoder, ChatMaskFallsBackToPrefixes_C6_prep) {
  const moe::Tokenizer t = tok(kPrepend);
  const moe::RenderedChat r = ChatTemplate::mixtral("<s>", "</s>").render(
      {{"user", "hi"}, {"assistant", "yo"}, {"user", "hi"}, {"assistant", "yo yo"}}, false);
  moe::EncodedDoc d;
  moe::DocEncoder(t, true).chat(r, d);
  EXPECT_EQ(d.ids, (Ids{96, 28, 83, 30, 96, 59, 101, 61, 96, 97, 96, 59, 15, 101, 61, 96, 98, 28, 15, 83, 30, 96, 59,
                        101, 61, 96, 97, 96, 59, 15, 101, 61, 96, 98, 96, 98, 28, 15, 83, 30}));
  EXPECT_EQ(d.mask, (Mask{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                          0, 1, 1, 1, 1, 1, 1, 1, 1}));
  EXPECT_TRUE(d.used_prefix_fallback);
  EXPECT_EQ(d.ids, t.encode(r.text, false));
}

// A merge across the reply boundary ("t\n" in "assistant\n") leaves the mask undefined: refused.
TEST(DocEncoder, RefusesATokenAcrossASpanBoundary_C6_prep) {
  const moe::Tokenizer t = tok(kCross);
  const moe::RenderedChat r = ChatTemplate::chatml(std::nullopt).render({{"user", "hi"}, {"assistant", "yo"}}, false);
  moe::EncodedDoc d;
  EXPECT_NE(bad_input([&] { moe::DocEncoder(t, true).chat(r, d); }).find("straddles"), std::string::npos);
  moe::DocEncoder(t, false).chat(r, d);  // without masks there is nothing to place
  EXPECT_EQ(d.ids, (Ids{2, 89, 87, 73, 86, 99, 101, 3, 99, 2, 69, 87, 87, 77, 87, 88, 69, 82, 106, 102, 3, 99}));
}

// Plain text and prompt/completion pairs: the post-processor's specials, EOS appended once, the prompt masked.
TEST(DocEncoder, PlainAndPairDocuments_C6_prep) {
  std::string j = kChars;
  const std::string from = "\"post_processor\": null";
  ASSERT_NE(j.find(from), std::string::npos);
  j.replace(j.find(from), from.size(), R"("post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}], "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}})");
  const moe::Tokenizer t = moe::Tokenizer::from_json(j, R"({"bos_token": "<s>", "eos_token": "</s>"})", "unit");
  moe::EncodedDoc d;
  moe::DocEncoder(t, true).plain("hi yo", d);  // <s> hi ' ' yo </s>; EOS is there already
  EXPECT_EQ(d.ids, (Ids{0, 101, 4, 102, 1}));
  EXPECT_EQ(d.mask, Mask(5, 1));
  moe::DocEncoder(t, true).pair("hi ", "yo", d);
  EXPECT_EQ(d.ids, (Ids{0, 101, 4, 102, 1}));
  EXPECT_EQ(d.mask, (Mask{0, 0, 0, 1, 1}));
  moe::DocEncoder(t, false).pair("hi ", "yo", d);
  EXPECT_EQ(d.mask, Mask(5, 1));
  const moe::Tokenizer noeos = tok(kChars, R"({"eos_token": "<|im_end|>"})");
  moe::DocEncoder(noeos, true).pair("hi", "yo", d);  // no post-processor; EOS appended and counted
  EXPECT_EQ(d.ids, (Ids{101, 102, 3}));
  EXPECT_EQ(d.mask, (Mask{0, 1, 1}));
  const moe::RenderedChat r = ChatTemplate::chatml(std::nullopt).render({{"user", "hi"}, {"assistant", "yo"}}, false);
  moe::DocEncoder(noeos, true).chat(r, d);  // the appended EOS only separates documents: 0
  EXPECT_EQ(d.ids.back(), 3u);
  EXPECT_EQ(d.mask.back(), 0);
}

TEST(Records, ParsesEachFormatAndReportsMalformedLines_C6_prep) {
  const moe::Tokenizer t = tok(kChars, R"({"eos_token": "</s>"})");
  const moe::DocEncoder enc(t, true);
  const ChatTemplate tpl = ChatTemplate::chatml(std::nullopt);
  moe::EncodedDoc d;
  using F = moe::InputFormat;
  moe::encode_line(F::Jsonl, R"({"text": "hi", "id": 7})", nullptr, enc, d);
  EXPECT_EQ(d.ids, (Ids{101, 1}));
  moe::encode_line(F::Jsonl, R"({"question": "hi", "answer": "yo"})", nullptr, enc, d);
  EXPECT_EQ(d.mask, (Mask{0, 1, 1}));
  moe::encode_line(F::Jsonl, R"({"prompt": "hi", "completion": "yo"})", &tpl, enc, d);  // rendered as a chat
  EXPECT_EQ(d.ids.size(), 24u);
  moe::encode_line(F::Chat, R"({"messages": [{"role": "user", "content": "hi"}]})", &tpl, enc, d);
  EXPECT_EQ(d.mask, Mask(d.ids.size(), 0));
  const std::vector<std::pair<F, std::string>> bad = {
      {F::Jsonl, "not json"}, {F::Jsonl, "[1]"}, {F::Jsonl, R"({"id": 1})"}, {F::Jsonl, R"({"text": 3})"},
      {F::Jsonl, R"({"text": "a", "prompt": "b", "completion": "c"})"}, {F::Jsonl, R"({"question": "q"})"},
      {F::Chat, R"({"text": "a"})"}, {F::Chat, R"({"messages": []})"}, {F::Chat, R"({"messages": [{"role": "user"}]})"},
      {F::Chat, R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]})"},
      {F::Chat, R"({"messages": [{"role": "tool", "content": "a"}]})"}, {F::Text, "bad \xff utf8"}};
  for (const auto& [f, line] : bad) EXPECT_NE(bad_input([&] { moe::encode_line(f, line, &tpl, enc, d); }), "") << line;
  EXPECT_TRUE(moe::is_blank_line(F::Jsonl, " \t\r"));
  EXPECT_FALSE(moe::is_blank_line(F::Text, " "));
}

TEST(LineReader, SplitsLinesInBoundedBatches_C6_prep) {
  std::string data = "a\n\nbb\r\n" + std::string(100, 'x') + "\nlast";
  std::FILE* f = fmemopen(data.data(), data.size(), "rb");
  moe::LineReader r(f, 16, 2);
  std::vector<std::string_view> lines;
  std::vector<std::string> all;
  while (r.next_batch(lines)) {
    EXPECT_LE(lines.size(), 2u);
    for (auto l : lines) all.emplace_back(l);
  }
  std::fclose(f);
  EXPECT_EQ(all, (std::vector<std::string>{"a", "", "bb\r", std::string(100, 'x'), "last"}));
  EXPECT_EQ(r.bytes_done(), data.size());
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct TmpDir {
  std::string path;
  TmpDir() {
    char tmpl[] = "/tmp/moe_prep_unit_XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TmpDir() { std::system(("rm -rf '" + path + "'").c_str()); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path + "/" + name, std::ios::binary) << text;
    return path + "/" + name;
  }
};

TEST(TokenFiles, LittleEndianLayoutAndAtomicCommit_C6_prep) {
  TmpDir tmp;
  const std::string out = tmp.path + "/out";
  {
    moe::TokenFiles files(out);
    files.append({1, 0x01020304}, {0, 1});
    files.append({7}, {1});
    EXPECT_EQ(read_all(out + "/meta.json"), "");  // nothing published before commit
    files.commit("{}\n");
  }
  EXPECT_EQ(read_all(out + "/tokens.bin"), std::string("\1\0\0\0\4\3\2\1\7\0\0\0", 12));
  EXPECT_EQ(read_all(out + "/loss_mask.bin"), std::string("\0\1\1", 3));
  std::string docs(24, '\0');
  docs[8] = 2;
  docs[16] = 3;
  EXPECT_EQ(read_all(out + "/docs.bin"), docs);
  EXPECT_EQ(read_all(out + "/meta.json"), "{}\n");
  { moe::TokenFiles abandoned(out); abandoned.append({5}, {1}); }  // no commit: old files stay, no .tmp left
  EXPECT_EQ(read_all(out + "/tokens.bin").size(), 12u);
  EXPECT_NE(::access((out + "/tokens.bin.tmp").c_str(), F_OK), 0);
}

TEST(Build, ReportsMalformedLinesWithFileAndLine_C6_prep) {
  TmpDir tmp;
  const std::string tdir = tmp.path + "/tok";
  ASSERT_EQ(::mkdir(tdir.c_str(), 0777), 0);
  tmp.write("tok/tokenizer.json", kChars);
  tmp.write("tok/tokenizer_config.json", R"({"eos_token": "</s>"})");
  const std::string in = tmp.write("in.jsonl", "{\"text\": \"hi\"}\n\nnope\n{\"question\": \"hi\", \"answer\": \"yo\"}\n[]\n");
  moe::BuildOptions o;
  o.tokenizer_dir = tdir;
  o.out_dir = tmp.path + "/out";
  o.format = "jsonl";
  o.mask_prompt = true;
  o.inputs = {in};
  char* buf = nullptr;
  size_t len = 0;
  o.log = open_memstream(&buf, &len);
  const moe::BuildStats st = moe::run_build(o);
  std::fclose(o.log);
  const std::string log(buf, len);
  std::free(buf);
  EXPECT_NE(log.find(in + ":3: the line is not JSON"), std::string::npos) << log;
  EXPECT_NE(log.find(in + ":5: the line is JSON array, not an object"), std::string::npos) << log;
  EXPECT_EQ(log.find(".cpp:"), std::string::npos) << log;  // reports carry no source locations
  EXPECT_EQ(st.num_docs, 2u);
  EXPECT_EQ(st.skipped_lines, 2u);
  EXPECT_EQ(st.num_tokens, 5u);       // hi </s> | hi yo </s>
  EXPECT_EQ(st.num_loss_tokens, 4u);  // 2 + 2
  EXPECT_EQ(read_all(o.out_dir + "/loss_mask.bin"), std::string("\1\1\0\1\1", 5));
  const std::string meta = read_all(o.out_dir + "/meta.json");
  EXPECT_NE(meta.find("\"skipped_lines\": 2"), std::string::npos) << meta;
  EXPECT_NE(meta.find("\"chat_template\": null"), std::string::npos) << meta;

  o.strict = true;  // the first malformed line is fatal; the earlier output stays as it was
  o.log = std::fopen("/dev/null", "w");
  o.out_dir = tmp.path + "/strict";
  EXPECT_NE(bad_input([&] { moe::run_build(o); }).find(in + ":3: "), std::string::npos);
  std::fclose(o.log);
  EXPECT_NE(::access((o.out_dir + "/meta.json").c_str(), F_OK), 0);
  EXPECT_NE(::access((o.out_dir + "/tokens.bin.tmp").c_str(), F_OK), 0);
  o.strict = false;
  o.format = "text";  // --mask-prompt and --chat-template do not apply to text lines: refused
  EXPECT_NE(bad_input([&] { moe::run_build(o); }).find("--mask-prompt"), std::string::npos);
  o.mask_prompt = false;
  o.chat_template = "chatml";
  EXPECT_NE(bad_input([&] { moe::run_build(o); }).find("--chat-template"), std::string::npos);
  o.format = "chat";  // auto with no template in the directory
  o.chat_template = "auto";
  EXPECT_NE(bad_input([&] { moe::run_build(o); }).find("no chat_template"), std::string::npos);
}

}  // namespace
