#!/usr/bin/env bash
# Owns the metrics.jsonl write-error test: a failed append ends the run (every rank) with one message naming the file and the OS error, and leaves no torn line.
# usage: metrics_faults.sh MOE_TRAIN MODE [NP]
#   MODE tmpfs   run.dir on a 64 KiB tmpfs that fills up during the run (exit 77 where mount is refused)
#        inject  MOE_FAULT_INJECT=metrics_write:3:5: the third line fails with EIO
set -u
MOE_TRAIN=$1
MODE=$2
NP=${3:-1}
here=$(dirname "$0")
source "$here/common.sh"
tmp=$(mktemp -d)
mnt=""
cleanup() { [[ -n "$mnt" ]] && umount "$mnt" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
make_inputs "$tmp"
run="$tmp/run"
sets=(--set checkpoint.dir="$tmp/ck" --set checkpoint.every=0 --set train.micro_batch=1 --set train.grad_accum=$((4 / NP)))
if [[ $MODE == tmpfs ]]; then
  mkdir -p "$tmp/mnt"
  if ! mount -t tmpfs -o size=64k tmpfs "$tmp/mnt" 2>/dev/null; then echo "SKIP: cannot mount a tmpfs here"; exit 77; fi
  mnt="$tmp/mnt"
  run="$mnt/run"
  # expert_load on every line (~0.5 KiB): 64 KiB fill up within a few hundred steps.
  sets+=(--set train.steps=2000 --set log.every=1)
  envs=(MOE_X=0)
  want="No space left on device"
else
  sets+=(--set train.steps=10)
  envs=(MOE_FAULT_INJECT=metrics_write:3:5)
  want="Input/output error"
fi
sets+=(--set run.dir="$run")
start=$(date +%s.%N)
if (( NP == 1 )); then
  setsid env "${envs[@]}" "$MOE_TRAIN" "$tmp/tiny.yaml" "${sets[@]}" > "$tmp/log" 2>&1 &
else
  setsid mpirun --oversubscribe --bind-to none -x "${envs[0]}" -np "$NP" "$MOE_TRAIN" "$tmp/tiny.yaml" "${sets[@]}" \
    > "$tmp/log" 2>&1 &
fi
pid=$!
for _ in $(seq 1 1200); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then echo "FAIL: still running after 120 s"; kill -9 -- -$pid; cat "$tmp/log"; exit 1; fi
wait $pid; rc=$?
echo "np $NP mode $MODE: exit $rc after $(echo "$(date +%s.%N) - $start" | bc) s"
fail=0
(( rc != 0 && rc < 128 )) || { echo "FAIL: exit $rc (want non-zero, not a signal)"; fail=1; }
n=$(grep -c "cannot write '.*metrics.jsonl': $want" "$tmp/log")
[[ $n -eq 1 ]] || { echo "FAIL: $n messages naming metrics.jsonl and '$want' (want one)"; fail=1; }
# Every line is a whole JSON object and steps run 1, 2, ... without a gap.
"${PYTHON:-python3}" - "$run/metrics.jsonl" "$MODE" <<'PY' || fail=1
import json, sys
text = open(sys.argv[1]).read()
if text and not text.endswith("\n"):
    sys.exit("FAIL: metrics.jsonl ends with a torn line")
steps = [json.loads(l)["step"] for l in text.splitlines()]
if steps != list(range(1, len(steps) + 1)):
    sys.exit(f"FAIL: steps {steps[:5]}...{steps[-5:]} are not 1..n")
if sys.argv[2] == "inject" and len(steps) != 2:
    sys.exit(f"FAIL: {len(steps)} lines, want 2 (the third append failed)")
print(f"metrics.jsonl: {len(steps)} whole lines")
PY
(( fail == 0 )) || { cat "$tmp/log" | tail -20; exit 1; }
echo PASS
