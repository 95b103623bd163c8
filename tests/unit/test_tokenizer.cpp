// Owns the unit tests of src/data/tokenizer (DESIGN §6 moe-prep): BPE merge order, unk fusing and byte fallback, added tokens and templates, decoders, UTF-8 handling, regex rewrite, refusals, metadata, thread safety.
// contract: C6.tokenizer
// Expected ids and texts were produced by the `tokenizers` library (0.23) from the same JSON; the oracle
// tests/oracle/test_tokenizer.py covers trained tokenizers of every supported family on thousands of texts.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/text.h"
#include "data/tokenizer/tokenizer.h"

namespace {

using Ids = std::vector<moe::Tokenizer::Id>;

// A SentencePiece-style tokenizer (Llama-2 layout) small enough to check by hand: merges with competing ranks,
// byte fallback for 中 (its three bytes are in the vocabulary) and <unk> for 日 (its bytes are not), fused.
const char* kSpm = R"JSON({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [
 {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
 {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
 {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
 "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
   {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
 "pre_tokenizer": null,
 "post_processor": {"type": "TemplateProcessing",
   "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
   "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}}],
   "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
 "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
   {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
 "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
   "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
   "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0xE4>": 3, "<0xB8>": 4, "<0xAD>": 5, "\u2581": 6, "a": 7, "b": 8,
             "c": 9, "ab": 10, "bc": 11, "abc": 12, "\u2581a": 13, "\u2581ab": 14, "aa": 15, "aaa": 16},
   "merges": [["b", "c"], ["a", "b"], ["a", "a"], ["\u2581", "a"], ["ab", "c"], ["\u2581a", "b"], ["aa", "a"]]}})JSON";

const char* kConfig = R"JSON({"bos_token": "<s>", "eos_token": {"content": "</s>", "special": true},
 "add_bos_token": true, "add_eos_token": false})JSON";

moe::Tokenizer spm() { return moe::Tokenizer::from_json(kSpm, kConfig, "unit"); }

// Replaces the first occurrence of `from` in kSpm (the test fails if it is absent).
std::string spm_with(const std::string& from, const std::string& to) {
  std::string j = kSpm;
  const size_t at = j.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) j.replace(at, from.size(), to);
  return j;
}

// The BadInput message of loading `json`, or "" when it loads.
std::string load_error(const std::string& json) {
  try {
    moe::Tokenizer::from_json(json, "", "unit");
  } catch (const moe::Error& e) {
    EXPECT_EQ(e.kind(), moe::ErrorKind::BadInput) << e.what();
    return e.what();
  }
  return "";
}

TEST(Tokenizer, MergeRanksAndTiesAsTheLibrary) {
  const moe::Tokenizer t = spm();
  // "▁abc": b+c (rank 0) first, then ▁+a (rank 3); ▁a+b never applies.
  EXPECT_EQ(t.encode("abc", false), (Ids{13, 11}));
  EXPECT_EQ(t.encode("aaaa", false), (Ids{6, 15, 15}));   // a+a leftmost first, twice; ▁+a then has no a left
  EXPECT_EQ(t.encode("aaaaa", false), (Ids{6, 15, 16}));  // aa, aa, a → aa+a (rank 6) on the right
  EXPECT_EQ(t.encode("ab abc", false), (Ids{6, 10, 13, 11}));
  EXPECT_EQ(t.encode(" abc", false), (Ids{6, 13, 11}));
  EXPECT_EQ(t.encode("bcab", false), (Ids{6, 11, 10}));
  EXPECT_EQ(t.encode("  ", false), (Ids{6, 6, 6}));
}

TEST(Tokenizer, ByteFallbackAndFusedUnkInLibraryOrder) {
  const moe::Tokenizer t = spm();
  EXPECT_EQ(t.encode("a\u4e2d\u65e5\u65e5b", false), (Ids{13, 3, 4, 5, 0, 8}));  // 日日 → one <unk>
  // The library adds byte-fallback bytes before a pending <unk>: 日中 gives 中's bytes, then <unk>.
  EXPECT_EQ(t.encode("\u65e5\u4e2d", false), (Ids{6, 3, 4, 5, 0}));
  EXPECT_EQ(t.encode("\u65e5", false), (Ids{6, 0}));
}

TEST(Tokenizer, AddedTokensAndTemplate) {
  const moe::Tokenizer t = spm();
  EXPECT_EQ(t.encode("<s>abc</s>", false), (Ids{1, 13, 11, 2}));
  EXPECT_EQ(t.encode("<s>abc</s>", true), (Ids{1, 1, 13, 11, 2}));
  EXPECT_EQ(t.encode("abc", true), (Ids{1, 13, 11}));
  EXPECT_EQ(t.encode("", false), Ids{});
  EXPECT_EQ(t.encode("", true), Ids{1});
  Ids appended{7};
  t.encode("abc", false, appended);  // appends, does not clear
  EXPECT_EQ(appended, (Ids{7, 13, 11}));
}

TEST(Tokenizer, DecodeAsTheLibrary) {
  const moe::Tokenizer t = spm();
  EXPECT_EQ(t.decode({3, 4, 5}, false), "\u4e2d");
  EXPECT_EQ(t.decode({3, 4}, false), "\ufffd\ufffd");  // invalid bytes: one U+FFFD per byte
  EXPECT_EQ(t.decode({3, 7, 4, 5}, false), "\ufffda\ufffd\ufffd");
  EXPECT_EQ(t.decode({13, 12, 0, 1, 2}, false), "aabc<unk><s></s>");
  EXPECT_EQ(t.decode({13, 12, 0, 1, 2}, true), "aabc");
  EXPECT_EQ(t.decode({6, 6, 7}, false), " a");
  EXPECT_EQ(t.decode({1, 7, 2, 999}, true), "a");  // unknown ids are skipped
}

TEST(Tokenizer, LossyUtf8AsRust) {
  // Rust's from_utf8_lossy (the library's ByteLevel decoder), per byte string.
  using moe::tok::utf8_lossy;
  EXPECT_EQ(utf8_lossy("\xe4\xb8"), "\ufffd");
  EXPECT_EQ(utf8_lossy("\xf0\x80"), "\ufffd\ufffd");
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80"), "\ufffd\ufffd\ufffd");
  EXPECT_EQ(utf8_lossy("a\xff" "b"), "a\ufffd" "b");
  EXPECT_EQ(utf8_lossy("\xe4\xb8\xad"), "\u4e2d");
  EXPECT_EQ(utf8_lossy("\xf4\x90\x80\x80"), "\ufffd\ufffd\ufffd\ufffd");
  EXPECT_EQ(utf8_lossy("\xc0\xaf"), "\ufffd\ufffd");
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x98"), "\ufffd");
  EXPECT_EQ(moe::tok::utf8_invalid_at("ok\xf0\x9f\x98\x80ok"), std::string::npos);
  EXPECT_EQ(moe::tok::utf8_invalid_at("ok\xf0\x9f\x98"), 2u);
}

TEST(Tokenizer, InvalidUtf8TextIsBadInput) {
  const moe::Tokenizer t = spm();
  try {
    t.encode("ab\xff", false);
    FAIL() << "no error";
  } catch (const moe::Error& e) {
    EXPECT_EQ(e.kind(), moe::ErrorKind::BadInput);
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8 (byte 2)"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, ConfigMetadata) {
  const moe::Tokenizer t = spm();
  EXPECT_EQ(t.bos_id(), 1u);
  EXPECT_EQ(t.eos_id(), 2u);  // {"content": ...} form
  EXPECT_EQ(t.add_bos(), true);
  EXPECT_EQ(t.add_eos(), false);
  EXPECT_EQ(t.vocab_size(), 17u);
  EXPECT_EQ(t.token_to_id("\u2581ab"), 14u);
  EXPECT_EQ(t.id_to_token(16), "aaa");
  const moe::Tokenizer bare = moe::Tokenizer::from_json(kSpm, "", "unit");
  EXPECT_FALSE(bare.bos_id().has_value());
  EXPECT_FALSE(bare.add_bos().has_value());
  try {
    moe::Tokenizer::from_json(kSpm, R"({"bos_token": "<nope>"})", "unit");
    FAIL() << "no error";
  } catch (const moe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unit/tokenizer_config.json: bos_token '<nope>'"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, RefusesWhatItDoesNotImplement) {
  struct Case {
    std::string from, to, needle;
  };
  const std::vector<Case> cases = {
      {R"("pre_tokenizer": null)", R"("pre_tokenizer": {"type": "Whitespace"})",
       "unit/tokenizer.json: pre_tokenizer type 'Whitespace' is not supported"},
      {R"({"type": "Prepend", "prepend": "\u2581"})", R"({"type": "Lowercase"})",
       "normalizer.normalizers[0] type 'Lowercase' is not supported"},
      {R"("type": "BPE")", R"("type": "Unigram")", "model type 'Unigram' is not supported"},
      {R"("dropout": null)", R"("dropout": 0.1)", "model.dropout"},
      {R"("end_of_word_suffix": null)", R"("end_of_word_suffix": "</w>")", "model.end_of_word_suffix"},
      {R"("truncation": null)", R"("truncation": {"max_length": 4})", "truncation"},
      {R"("padding": null)", R"("padding": {"strategy": "BatchLongest"})", "padding"},
      {R"({"type": "Fuse"})", R"({"type": "CTC"})", "decoder.decoders[2] type 'CTC' is not supported"},
      {R"("type": "TemplateProcessing")", R"("type": "RobertaProcessing")",
       "post_processor type 'RobertaProcessing' is not supported"},
      {R"(["ab", "c"])", R"(["ab", "zz"])", "model.merges[4]"},
      {R"("version": "1.0")", R"("version": "2.0")", "version"},
      {R"("pre_tokenizer": null)", R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false})",
       "uses \\w"},
  };
  for (const Case& c : cases) {
    const std::string err = load_error(spm_with(c.from, c.to));
    EXPECT_NE(err.find(c.needle), std::string::npos) << "mutation " << c.to << " gave: " << err;
  }
  EXPECT_NE(load_error("{not json").find("unit/tokenizer.json: invalid JSON"), std::string::npos);
}

TEST(Tokenizer, RegexRewriteKeepsOnigurumaMeaning) {
  using moe::tok::onig_to_pcre2;
  const std::string ws = "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";
  EXPECT_EQ(onig_to_pcre2("\\s+(?!\\S)", "t"), "[" + ws + "]+(?![^" + ws + "])");
  EXPECT_EQ(onig_to_pcre2("[^\\s\\p{L}]", "t"), "[^" + ws + "\\p{L}]");
  EXPECT_EQ(onig_to_pcre2("[]\\s]", "t"), "[]" + ws + "]");  // ']' first in a class is literal
  EXPECT_EQ(onig_to_pcre2("\\u00e9|\\p{N}{1,3}", "t"), "\\x{00e9}|\\p{N}{1,3}");
  EXPECT_THROW(onig_to_pcre2("\\w+", "t"), moe::Error);
  EXPECT_THROW(onig_to_pcre2("[^\\S]", "t"), moe::Error);
  // U+180E is not White_Space (Oniguruma) though PCRE2's own \s takes it; U+0085 is.
  const moe::tok::Regex re("\\s+", "t");
  std::vector<moe::tok::Span> m;
  re.find_all("a\u180e" "b\u0085c", m);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0], moe::tok::Span(5, 7));
}

TEST(Tokenizer, EmptyMatchesAsOnigFindIter) {
  // The onig crate drops the first empty match after a non-empty one and steps one character past empty ones:
  // the library's Replace(Regex("a*"), "X") turns "baaé" into "XbXéX" and "xay" into "XxXyX".
  const moe::tok::Regex re("a*", "t");
  std::vector<moe::tok::Span> m;
  re.find_all("baa\u00e9", m);
  EXPECT_EQ(m, (std::vector<moe::tok::Span>{{0, 0}, {1, 3}, {5, 5}}));
  m.clear();
  re.find_all("xay", m);
  EXPECT_EQ(m, (std::vector<moe::tok::Span>{{0, 0}, {1, 2}, {3, 3}}));
}

TEST(Tokenizer, ConcurrentEncodeMatchesSerial) {
  const moe::Tokenizer t = spm();
  const std::vector<std::string> texts = {"abc", "aaaaa bc", "\u65e5\u4e2d ab", "<s>a</s>", "cab  abc aa"};
  std::vector<Ids> serial;
  for (const auto& s : texts) serial.push_back(t.encode(s, true));
  std::vector<std::thread> th;
  std::vector<int> ok(4, 1);
  for (int k = 0; k < 4; ++k)
    th.emplace_back([&, k] {
      for (int rep = 0; rep < 2000; ++rep)
        for (size_t i = 0; i < texts.size(); ++i)
          if (t.encode(texts[i], true) != serial[i]) ok[size_t(k)] = 0;
    });
  for (auto& x : th) x.join();
  EXPECT_EQ(ok, (std::vector<int>{1, 1, 1, 1}));
}

}  // namespace
