#!/usr/bin/env bash
# Owns the CPU test of device_check.sh's nccl_dispatch_a2a row: with ≥ 2 GPUs it runs gpu-alltoall under mpirun, one rank per GPU, and takes the row the benchmark prints; with one GPU the row says it needs ≥ 2.
# No GPU is needed: a stub nvidia-smi lists the GPUs and MOE_GPU_BUILD points at a build folder whose gpu-alltoall
# is a stub that logs its rank and prints a ROW line (rank 0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
fail() { echo "FAIL: $*" >&2; [[ -f "$DIR/out/device_check.md" ]] && cat "$DIR/out/device_check.md" >&2; exit 1; }
command -v mpirun >/dev/null || fail "mpirun not found (an MPI build dependency)"

mkdir -p "$DIR/bin" "$DIR/build/bench" "$DIR/out"
cat >"$DIR/bin/nvidia-smi" <<'SMI'
#!/usr/bin/env bash
n="${STUB_GPUS:-2}"
if [[ "${1:-}" == -L ]]; then for ((i = 0; i < n; ++i)); do echo "GPU $i: Stub GPU (UUID: GPU-$i)"; done; exit 0; fi
[[ "${1:-}" == --query-gpu* ]] && { echo "Stub GPU, 1000 MiB, 1.0, 1000 MHz"; exit 0; }
echo "stub nvidia-smi"
SMI
cat >"$DIR/build/bench/gpu-alltoall" <<'STUB'
#!/usr/bin/env bash
echo "rank ${OMPI_COMM_WORLD_RANK:-none} of ${OMPI_COMM_WORLD_SIZE:-none} args [$*]" >>"$(dirname "$0")/calls.log"
[[ "${OMPI_COMM_WORLD_RANK:-0}" == 0 ]] && echo "ROW|nccl_dispatch_a2a|pass|stub figure, ${OMPI_COMM_WORLD_SIZE:-1} ranks"
exit 0
STUB
chmod +x "$DIR/bin/nvidia-smi" "$DIR/build/bench/gpu-alltoall"

check() {  # check GPUS: runs device_check.sh with GPUS stub GPUs
  rm -f "$DIR/build/bench/calls.log" "$DIR/out/device_check.md"
  env -u CUDA_VISIBLE_DEVICES PATH="$DIR/bin:$PATH" STUB_GPUS="$1" MOE_GPU_BUILD="$DIR/build" OUT="$DIR/out" \
    MOE_CHECK_BUDGET_S=120 timeout 200 bash "$ROOT/tests/gpu/device_check.sh" >"$DIR/stdout" 2>&1 ||
    { cat "$DIR/stdout" >&2; fail "device_check.sh exit $? with $1 stub GPUs"; }
  ROW="$(grep '^| nccl_dispatch_a2a |' "$DIR/out/device_check.md" || true)"
  (($(grep -c '^| nccl_dispatch_a2a |' "$DIR/out/device_check.md") == 1)) || fail "want exactly one nccl_dispatch_a2a row"
}

check 2
[[ "$ROW" == "| nccl_dispatch_a2a | pass | stub figure, 2 ranks |" ]] || fail "2 GPUs: row '$ROW' is not the benchmark's own"
[[ -f "$DIR/build/bench/calls.log" ]] || fail "2 GPUs: gpu-alltoall was not run"
calls="$(sort "$DIR/build/bench/calls.log")"
[[ "$calls" == $'rank 0 of 2 args []\nrank 1 of 2 args []' ]] || fail "2 GPUs: want one mpirun rank per GPU, got: $calls"

check 1
[[ "$ROW" == *"| skip: needs ≥ 2 GPUs (this machine has 1) |"* ]] || fail "1 GPU: row '$ROW'"
[[ ! -f "$DIR/build/bench/calls.log" ]] || fail "1 GPU: gpu-alltoall was run"
echo "device_check.sh nccl_dispatch_a2a row: mpirun -np 2 with 2 GPUs, skipped with 1"
