#!/usr/bin/env bash
# Owns building and running bench/op_timing.cpp (per-op CPU timing of one training step) against an existing build.
# Usage: bench/op_timing.sh [--build DIR] [--threads N] [-- op_timing args: B L H I layers heads kv_heads E K V reps]
# Links with the same libraries as DIR's moe-train (DIR defaults to build-bench; it must hold libmoe_core.a).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-bench" THREADS=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) BUILD="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[[ -f "$BUILD/libmoe_core.a" ]] || { echo "op_timing.sh: $BUILD/libmoe_core.a missing; build first (cmake -B $BUILD -DMOE_NO_CUDA=ON && cmake --build $BUILD)" >&2; exit 2; }
cd "$BUILD"
flags="$(sed -n 's/^CXX_FLAGS = //p' CMakeFiles/moe_core.dir/flags.make) $(sed -n 's/^CXX_DEFINES = //p' CMakeFiles/moe_core.dir/flags.make) $(sed -n 's/^CXX_INCLUDES = //p' CMakeFiles/moe_core.dir/flags.make)"
# The link line of moe-train, minus its object file and output name.
libs="$(sed -e 's|^.* -o moe-train ||' CMakeFiles/moe-train.dir/link.txt)"
if [[ ! -x op_timing || "$ROOT/bench/op_timing.cpp" -nt op_timing || libmoe_core.a -nt op_timing ]]; then
  # shellcheck disable=SC2086
  c++ $flags -Wno-vexing-parse "$ROOT/bench/op_timing.cpp" -o op_timing $libs
fi
OMP_NUM_THREADS="${OMP_NUM_THREADS:-$THREADS}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$THREADS}" ./op_timing "$@"
