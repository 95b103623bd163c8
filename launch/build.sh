#!/usr/bin/env bash
# Configures and builds moe-train into build/ (Release; CUDA sources too when nvcc exists).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${MOE_BUILD_DIR:-build}"
# nvcc lives outside PATH on some images.
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
# ccache (when CMake finds it) keys on paths relative to the checkout: clones in other directories share objects.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
