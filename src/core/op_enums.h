// Owns the small enums shared by kernels and backends (GEMM transpose, accumulate-or-overwrite, RoPE direction).
#pragma once

namespace moe {

enum class Trans { No, Yes };
// Whether an op overwrites or adds into its destination (GEMM beta 0 / 1).
enum class Accumulate { Overwrite, Add };
// Inverse rotates by −angle (the backward of Forward).
enum class RopeDirection { Forward, Inverse };

}  // namespace moe
