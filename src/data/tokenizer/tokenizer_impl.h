// Owns the loaded state behind moe::Tokenizer (shared by load.cpp, which fills it, and tokenizer.cpp, which runs it).
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer/bpe.h"
#include "data/tokenizer/parts.h"
#include "data/tokenizer/tokenizer.h"

namespace moe {

struct Tokenizer::Impl {
  std::string file;                         // DIR/tokenizer.json, for messages
  bool has_normalizer = false;
  std::vector<tok::NormStep> normalizer;
  std::vector<tok::PreStep> pre;
  std::unique_ptr<tok::Bpe> model;
  tok::AddedVocab added;
  std::vector<tok::TemplatePiece> single;   // empty: the post-processor adds nothing
  bool has_decoder = false;
  std::vector<tok::DecStep> decoder;
  std::optional<Id> bos, eos;
  std::optional<bool> add_bos, add_eos;
};

// Fills impl from tokenizer.json / tokenizer_config.json text (load.cpp).
void load_tokenizer(Tokenizer::Impl& impl, const std::string& tokenizer_json, const std::string& config_json,
                    const std::string& dir);

}  // namespace moe
