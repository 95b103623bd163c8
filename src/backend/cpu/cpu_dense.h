// Owns the factory of the CPU dense op table (today's kernels/ref kernels behind DenseOps<T>).
#pragma once
#include <memory>

#include "backend/dense_ops.h"

namespace moe {

// T = float or double: every op calls exactly the kernels/ref kernel the model called before the seam, with the
// same arguments, so results are bitwise those of the pre-seam code (attention excepted, see cpu_dense.cpp).
template <typename T>
std::unique_ptr<DenseOps<T>> make_cpu_dense_ops();

}  // namespace moe
