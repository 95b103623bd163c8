// Owns the dimension letters used in every shape comment (STYLE habit 2).
#pragma once
// B  micro-batch size (sequences)       L  sequence length (tokens per sequence)
// T  tokens in a micro-batch = B·L      H  hidden size
// V  vocabulary size                    NH query heads, NKV key/value heads, D head_dim
// E  experts                            K  top-k experts per token
// I  expert (or dense MLP) intermediate width
// P  kept (token, expert) pairs of a micro-batch after capacity, P ≤ T·K
// C  per-expert capacity                R  ranks
#include <cstdint>
namespace moe {
using i64 = std::int64_t;
}
