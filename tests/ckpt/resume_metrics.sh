#!/usr/bin/env bash
# Owns the resume-metrics test: after a resume from step 5 of a 12-step run, metrics.jsonl holds steps 1..12 once each, in order (old lines of later steps and a torn line dropped).
set -u
MOE_TRAIN=$1
here=$(dirname "$0")
source "$here/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make_inputs "$tmp"
ck="$tmp/run/checkpoints"
sets=(--set train.steps=12 --set checkpoint.every=5 --set checkpoint.keep=5)
"$MOE_TRAIN" "$tmp/tiny.yaml" "${sets[@]}" > "$tmp/a.log" 2>&1 || { echo "FAIL: first run"; cat "$tmp/a.log"; exit 1; }
cp "$tmp/run/metrics.jsonl" "$tmp/straight.jsonl"
# Back to step 5 (as if the run had been killed after it), with a torn line at the end of the log.
rm -f "$ck/step_10.h5" "$ck/step_12.h5"
printf '{"step": 13, "loss": 4.1' >> "$tmp/run/metrics.jsonl"
"$MOE_TRAIN" "$tmp/tiny.yaml" "${sets[@]}" --resume auto > "$tmp/b.log" 2>&1 || { echo "FAIL: resume"; cat "$tmp/b.log"; exit 1; }
grep -q "resumed from .*step_5.h5 at step 5" "$tmp/b.log" || { echo "FAIL: did not resume from step 5"; cat "$tmp/b.log"; exit 1; }
python3 - "$tmp/straight.jsonl" "$tmp/run/metrics.jsonl" <<'PY'
import json, sys
straight = open(sys.argv[1]).read().splitlines()
text = open(sys.argv[2]).read()
assert text.endswith("\n"), "FAIL: metrics.jsonl ends with a torn line"
lines = text.splitlines()
steps = [json.loads(l)["step"] for l in lines]
if steps != list(range(1, 13)):
    sys.exit(f"FAIL: steps in metrics.jsonl are {steps}, want 1..12 once each")
if lines[:5] != straight[:5]:
    sys.exit("FAIL: the lines of steps 1..5 are not the first run's")
# Same layout: the resumed steps are bitwise the uninterrupted ones (DESIGN §7), so their losses match too.
for a, b in zip(lines[5:], straight[5:]):
    if json.loads(a)["loss"] != json.loads(b)["loss"]:
        sys.exit(f"FAIL: resumed step {json.loads(a)['step']} has another loss than the straight run")
print("metrics.jsonl: steps 1..12 once each; 1..5 from the first run, 6..12 from the resumed one")
PY
rc=$?
(( rc == 0 )) || { cat "$tmp/run/metrics.jsonl" | cut -c1-60; exit 1; }
echo PASS
