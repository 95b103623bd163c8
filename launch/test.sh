#!/usr/bin/env bash
# Tests: set up (Debian packages + oracle venv), build, run the whole CTest suite (cpu, oracle, gpu-skips).
# MOE_TEST_SLOW=1 also runs the tests labelled slow.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
launch/build.sh
# Tests run side by side (ctest -j): threads that sleep instead of spinning keep them from starving each other.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
exclude=()
[[ "${MOE_TEST_SLOW:-0}" == 1 ]] || exclude=(-LE slow)
ctest --test-dir "${MOE_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "${exclude[@]}" "$@"
