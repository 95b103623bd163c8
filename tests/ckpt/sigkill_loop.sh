#!/usr/bin/env bash
# Owns the crash test: SIGKILL at 10 random moments of train+checkpoint; every resume must start from the newest complete checkpoint.
set -u
MOE_TRAIN=$1
here=$(dirname "$0")
source "$here/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make_inputs "$tmp"
ck="$tmp/run/checkpoints"
RANDOM=7
newest_complete() {  # highest step whose file has the 'complete' attribute, judged by h5dump (not by moe-train)
  local best=-1 f s
  for f in "$ck"/step_*.h5; do
    [[ -e "$f" ]] || continue
    s=${f##*step_}; s=${s%.h5}
    if h5dump -A -a /complete "$f" >/dev/null 2>&1 && (( s > best )); then best=$s; fi
  done
  echo "$best"
}
for i in $(seq 1 10); do
  "$MOE_TRAIN" "$tmp/tiny.yaml" --resume auto --set train.steps=100000 > "$tmp/log.$i" 2>&1 &
  pid=$!
  # 0.3 .. 2.3 s: lands in steps and inside checkpoint writes alike (one is written after every step).
  sleep "$(printf '0.%d' $((RANDOM % 10)))"; sleep $((RANDOM % 2))
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
  want=$(newest_complete)
  # Resume once more and check which step it picked (killed before any checkpoint: it must start fresh).
  if (( want > 0 )); then
    "$MOE_TRAIN" "$tmp/tiny.yaml" --resume auto --set train.steps=$want > "$tmp/check.$i" 2>&1
  else
    "$MOE_TRAIN" "$tmp/tiny.yaml" --resume auto --set train.steps=1 > "$tmp/check.$i" 2>&1 &&
      grep -q "starting from step 0" "$tmp/check.$i"
  fi
  rc=$?
  if (( want > 0 )); then
    if ! grep -q "resumed from .*step_${want}.h5 at step ${want}" "$tmp/check.$i"; then
      echo "FAIL round $i: newest complete is step_${want}.h5 but resume said:"; cat "$tmp/check.$i"; exit 1
    fi
  fi
  [[ $rc -eq 0 ]] || { echo "FAIL round $i: resume exited $rc"; cat "$tmp/check.$i"; exit 1; }
  partial=$(ls -a "$ck" 2>/dev/null | grep -c '\.tmp$')
  echo "round $i: killed; newest complete step_${want}.h5; resume ok; leftover temporaries: $partial"
done
echo PASS
