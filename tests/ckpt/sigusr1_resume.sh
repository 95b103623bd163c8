#!/usr/bin/env bash
# Owns the preemption test: SIGUSR1 → finish the step, checkpoint, exit 0; --resume auto finishes with the same final weights (bitwise) as an uninterrupted run.
set -u
MOE_TRAIN=$1
MOE_EXPORT=$2
here=$(dirname "$0")
source "$here/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make_inputs "$tmp"
sed -i 's/every: 1, keep: 3/every: 0, keep: 3/; s/steps: 40,/steps: 300,/' "$tmp/tiny.yaml"
# Uninterrupted reference.
"$MOE_TRAIN" "$tmp/tiny.yaml" --set run.dir="$tmp/ref" > "$tmp/ref.log" 2>&1 || { cat "$tmp/ref.log"; exit 1; }
# Interrupted run: SIGUSR1 after a moment.
"$MOE_TRAIN" "$tmp/tiny.yaml" > "$tmp/a.log" 2>&1 &
pid=$!
# Signal once a few steps are done (the run takes about a second).
for _ in $(seq 1 400); do
  [[ -f "$tmp/run/metrics.jsonl" && $(wc -l < "$tmp/run/metrics.jsonl") -ge 3 ]] && break
  sleep 0.01
done
kill -USR1 $pid
wait $pid; rc=$?
[[ $rc -eq 0 ]] || { echo "FAIL: exit $rc after SIGUSR1"; cat "$tmp/a.log"; exit 1; }
grep -q "stop signal: checkpoint" "$tmp/a.log" || { echo "FAIL: no checkpoint on signal"; cat "$tmp/a.log"; exit 1; }
step=$(cat "$tmp/run/checkpoints/latest")
[[ "$step" != "step_300.h5" ]] || { echo "FAIL: the signal arrived after the run ended; use a longer run"; exit 1; }
"$MOE_TRAIN" "$tmp/tiny.yaml" --resume auto > "$tmp/b.log" 2>&1 || { cat "$tmp/b.log"; exit 1; }
"$MOE_EXPORT" "$tmp/run/checkpoints/step_300.h5" --out "$tmp/hf_a" > /dev/null 2>&1
"$MOE_EXPORT" "$tmp/ref/checkpoints/step_300.h5" --out "$tmp/hf_ref" > /dev/null 2>&1
cmp "$tmp/hf_a/model.safetensors" "$tmp/hf_ref/model.safetensors" || { echo "FAIL: final weights differ"; exit 1; }
lines=$(wc -l < "$tmp/run/metrics.jsonl")
[[ $lines -eq 300 ]] || { echo "FAIL: metrics.jsonl has $lines lines, want 300 (each step once)"; exit 1; }
echo "stopped at $step, resumed, final weights bitwise equal to the uninterrupted run"
echo PASS
