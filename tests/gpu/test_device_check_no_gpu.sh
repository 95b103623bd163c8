#!/usr/bin/env bash
# Owns the CPU test of tests/gpu/device_check.sh without a GPU: exit 0, the table written, every row "skip: no GPU".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
fail() { echo "FAIL: $*" >&2; [[ -f "$DIR/device_check.md" ]] && cat "$DIR/device_check.md" >&2; exit 1; }

# CUDA_VISIBLE_DEVICES empty hides every GPU, also on a machine that has one.
rc=0
(cd "$DIR" && env -u OUT CUDA_VISIBLE_DEVICES= timeout 60 bash "$ROOT/tests/gpu/device_check.sh" >"$DIR/stdout" 2>&1) || rc=$?
((rc == 0)) || { cat "$DIR/stdout" >&2; fail "exit $rc without a GPU (want 0)"; }
[[ -f "$DIR/device_check.md" ]] || fail "no ./device_check.md written when OUT is unset"
[[ -f "$DIR/device_check.log" ]] || fail "no device_check.log beside the table"
grep -q '^| check | result | figure |$' "$DIR/device_check.md" || fail "no table header"
grep -q '^- GPU: none$' "$DIR/device_check.md" || fail "the header does not say GPU: none"
grep -qE '^- date: [0-9]{4}-[0-9]{2}-[0-9]{2} ' "$DIR/device_check.md" || fail "no date line"
# One row per check: nvidia-smi, the binaries and libraries, every GPU test executable (test_train_gpu as its four
# tests) and every benchmark figure.
want=(nvidia-smi binaries cuda_libraries train_gpu.runs_on_gpu train_gpu.vs_cpu_bf16 train_gpu.vs_cpu_fp32
      train_gpu.determinism train_gpu_bf16.cudnn_off cublas_bf16_peak grouped_gemm_vs_dense train_tok_s.moe-train train_tok_s.torch
      train_tok_s.ratio moe_routing_fraction moe_bench_tiny nccl_dispatch_a2a)
for src in "$ROOT"/tests/gpu/test_*_gpu.cu "$ROOT"/tests/gpu/test_*_gpu.cpp "$ROOT"/tests/gpu/test_nccl_comm.cu; do
  n="$(basename "${src%.*}")"
  [[ -e "$src" && "$n" != test_train_gpu ]] && want+=("$n")
done
for n in "${want[@]}"; do
  grep -qF "| $n | skip: no GPU" "$DIR/device_check.md" || fail "no skipped row for $n"
done
rows=$(grep -c '^| ' "$DIR/device_check.md")
((rows == ${#want[@]} + 1)) || fail "$((rows - 1)) rows, want ${#want[@]}"
bad="$(grep '^| ' "$DIR/device_check.md" | sed 1d | grep -v '| skip: no GPU' || true)"
[[ -z "$bad" ]] || fail "rows not skipped without a GPU: $bad"
# OUT set: the table goes there.
mkdir -p "$DIR/out"
env OUT="$DIR/out" CUDA_VISIBLE_DEVICES=-1 timeout 60 bash "$ROOT/tests/gpu/device_check.sh" >/dev/null 2>&1 || fail "exit $? with OUT set"
[[ -f "$DIR/out/device_check.md" ]] || fail "no \$OUT/device_check.md"
echo "device_check.sh without a GPU: ${#want[@]} rows skipped, exit 0"
