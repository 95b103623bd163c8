// Owns tokenizing a run's raw data at start-up: data.format jsonl (documents or chats) or text with data.tokenizer
// become moe-prep build directories under run.dir/data, made once by rank 0 (C5.raw).
#pragma once
#include <string>

#include "comm/communicator.h"
#include "config/config.h"

namespace moe {

// Whether d's sources are raw text that moe-train tokenizes itself: data.format jsonl, or text with data.tokenizer.
bool data_needs_tokenizing(const DataConfig& d);

// The pre-run checks of raw sources (BadInput naming the key): data.tokenizer set and loadable, every source
// (data.path or data.mix paths, and eval_data when set) a readable regular file.
void check_raw_sources(const DataConfig& d, const std::string& eval_data);

// Collective. With raw sources (data_needs_tokenizing), rank 0 runs moe-prep's build (C6.prep: the tokenizer,
// data.chat_template or auto, data.mask_prompt; a JSONL file whose first record has "messages" is chat data) for
// every source into run.dir/data/<k>-<file name>, skipping a directory whose meta.json records the same inputs,
// options, tokenizer and file sizes/mtimes; the other ranks wait. Returns cfg with those directories as its sources
// and data.format tokens (data.tokenizer kept: the export copies it). Without raw sources, cfg unchanged.
// BadInput for malformed input lines are reported and skipped as moe-prep does (counted in the log line).
Config tokenize_run_data(const Config& cfg, Communicator& world);

}  // namespace moe
