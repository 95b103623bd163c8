// Owns the listing of a checkpoint directory's published files (step_<N>.h5), shared by resume and run.dir checks.
#pragma once
#include <filesystem>
#include <utility>
#include <vector>

#include "core/dims.h"

namespace moe {

// (step, path) of every step_<N>.h5 in dir, newest step first; empty when dir does not exist.
std::vector<std::pair<i64, std::filesystem::path>> list_checkpoints(const std::filesystem::path& dir);

}  // namespace moe
