#!/usr/bin/env bash
# Owns the "one message, not one per rank" test: a bad config and a refused run.dir under mpirun -np N print their
# error once and every rank exits 2 (no MPI_Abort); a --dry-run prints one verdict and every rank exits 0.
set -u
MOE_TRAIN=$1
SRC=$2
NP=${3:-2}
here=$(dirname "$0")
source "$here/../ckpt/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
FAILED=0
fail() { echo "FAIL: $*"; FAILED=1; }
launch() { timeout 120 mpirun --oversubscribe --bind-to none -np "$NP" "$MOE_TRAIN" "$@" >"$tmp/log" 2>&1; RC=$?; }

make_text "$tmp/text.txt" 50000
common=(--set data.path="$tmp/text.txt" --set run.dir="$tmp/run" --set train.steps=2 --set train.micro_batch=2)

# 1. A mistyped key: every rank parses the same file.
launch "$SRC/configs/tiny.yaml" "${common[@]}" --set train.lrr=1e-3
n=$(grep -c "unknown key 'train.lrr'" "$tmp/log")
[ "$RC" -eq 2 ] || fail "bad config: exit $RC, expected 2"
[ "$n" -eq 1 ] || fail "bad config: the message appears $n times, expected once"
grep -q MPI_ABORT "$tmp/log" && fail "bad config: MPI_Abort was used"

# 2. A run.dir holding an earlier run's checkpoints (checked by rank 0 only).
launch "$SRC/configs/tiny.yaml" "${common[@]}"
[ "$RC" -eq 0 ] || { fail "first run: exit $RC"; cat "$tmp/log"; }
launch "$SRC/configs/tiny.yaml" "${common[@]}"
n=$(grep -c "holds checkpoints of an earlier run" "$tmp/log")
[ "$RC" -eq 2 ] || fail "refused run.dir: exit $RC, expected 2"
[ "$n" -eq 1 ] || fail "refused run.dir: the message appears $n times, expected once"
grep -q MPI_ABORT "$tmp/log" && fail "refused run.dir: MPI_Abort was used"

# 3. --dry-run under the launcher: the run-dir probes run on rank 0 only (ranks used to race creating the probe
# directory: "cannot create ... File exists"), and every rank exits with rank 0's verdict. Repeated: it was random.
for i in 1 2 3 4 5; do
  launch "$SRC/configs/tiny.yaml" "${common[@]}" --set run.dir="$tmp/dry$i" --dry-run
  [ "$RC" -eq 0 ] || { fail "dry run $i: exit $RC, expected 0"; break; }
  grep -q "File exists" "$tmp/log" && { fail "dry run $i: ranks raced on the run dir"; break; }
  n=$(grep -c "^checks passed" "$tmp/log")
  [ "$n" -eq 1 ] || { fail "dry run $i: the verdict appears $n times, expected once"; break; }
done

[ "$FAILED" -eq 0 ] || { sed 's/^/  | /' "$tmp/log" | head -60; exit 1; }
echo PASS
