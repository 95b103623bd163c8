#!/usr/bin/env bash
# Owns the dropless receive-bound test under mpirun -np 2 (ep 2): receive buffers of moe.dropless_buffer_factor·T·K
# rows that a rank would overflow stop EVERY rank with exit 2 and one message naming the key, the rows needed and
# the rows available (no hang, no crash); the default factor (= ep) trains; bad values are refused with exit 2.
set -u
MOE_TRAIN=$1
SRC=$2
here=$(dirname "$0")
source "$here/../ckpt/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
FAILED=0
fail() { echo "FAIL: $*"; FAILED=1; }
launch() { timeout 120 mpirun --oversubscribe --bind-to none -np 2 "$MOE_TRAIN" "$@" >"$tmp/log" 2>&1; RC=$?; }

make_text "$tmp/text.txt" 50000
common=(--set data.path="$tmp/text.txt" --set train.steps=2 --set train.micro_batch=2 --set parallel.ep=2
        --set moe.capacity_factor=0)

# 1. T·K rows per rank (factor 1, the smallest allowed): the two ranks receive 2·T·K rows together, so unless the
#    init routing splits them exactly evenly one rank overflows in the first layer.
launch "$SRC/configs/tiny.yaml" "${common[@]}" --set run.dir="$tmp/run1" --set moe.dropless_buffer_factor=1
[ "$RC" -eq 2 ] || fail "overflow: exit $RC, expected 2"
n=$(grep -c "moe.dropless_buffer_factor: EP rank [01] needs [0-9]* receive rows for its experts but its receive buffers hold 256 rows" "$tmp/log")
[ "$n" -eq 1 ] || fail "overflow: the message naming the key, rows needed and rows available appears $n times, expected once"
grep -q "Segmentation\|core dumped\|internal error" "$tmp/log" && fail "overflow: crashed"
[ -e "$tmp/run1/metrics.jsonl" ] && grep -q '"step"' "$tmp/run1/metrics.jsonl" && fail "overflow: a step was logged"

# 2. The default bound (factor 0 = ep) is the exact worst case: training runs.
launch "$SRC/configs/tiny.yaml" "${common[@]}" --set run.dir="$tmp/run2"
[ "$RC" -eq 0 ] || fail "default bound: exit $RC, expected 0"

# 3. Negative, non-numeric and below-one factors are refused before training.
for bad in -1 lots 0.5; do
  launch "$SRC/configs/tiny.yaml" "${common[@]}" --set run.dir="$tmp/run3" --set moe.dropless_buffer_factor=$bad
  [ "$RC" -eq 2 ] || fail "factor $bad: exit $RC, expected 2"
  grep -q "moe.dropless_buffer_factor" "$tmp/log" || fail "factor $bad: the message does not name the key"
done

# 4. With a capacity factor the key would size nothing: refused, not ignored.
launch "$SRC/configs/tiny.yaml" "${common[@]}" --set run.dir="$tmp/run4" --set moe.capacity_factor=1.25 \
  --set moe.dropless_buffer_factor=2
[ "$RC" -eq 2 ] || fail "factor with capacity: exit $RC, expected 2"
grep -q "moe.dropless_buffer_factor' bounds dropless routing only" "$tmp/log" || fail "factor with capacity: no message"

# 5. A factor far above ep is the worst case, not an overflowed row count: training runs.
launch "$SRC/configs/tiny.yaml" "${common[@]}" --set run.dir="$tmp/run5" --set moe.dropless_buffer_factor=1e300
[ "$RC" -eq 0 ] || fail "factor 1e300: exit $RC, expected 0"

[ "$FAILED" -eq 0 ] || { sed 's/^/  | /' "$tmp/log" | head -40; exit 1; }
echo PASS
