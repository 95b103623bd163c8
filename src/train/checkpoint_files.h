// Owns the small files of run.dir and checkpoint.dir: listing published checkpoints (step_<N>.h5), atomic text files.
#pragma once
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "core/dims.h"

namespace moe {

// (step, path) of every step_<N>.h5 in dir, newest step first; empty when dir does not exist.
std::vector<std::pair<i64, std::filesystem::path>> list_checkpoints(const std::filesystem::path& dir);

// Writes `text` to dir/name through a temporary and a rename; nothing is left half-written. Errors (Internal)
// name the file and the OS error.
void write_file_atomic(const std::filesystem::path& dir, const std::string& name, const std::string& text);

}  // namespace moe
