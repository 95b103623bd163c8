#!/usr/bin/env bash
# Owns the fault test: SIGKILL one rank mid-training under mpirun; every rank must be gone within 60 s with a non-zero exit.
set -u
MOE_TRAIN=$1
SRC=$2
here=$(dirname "$0")
source "$here/../ckpt/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make_text "$tmp/text.txt" 200000
mpirun --oversubscribe --bind-to none -np 2 "$MOE_TRAIN" "$SRC/configs/tiny.yaml" \
  --set data.path="$tmp/text.txt" --set run.dir="$tmp/run" --set train.steps=100000 --set log.every=1000 \
  --set train.micro_batch=4 > "$tmp/log" 2>&1 &
mpirun_pid=$!
# Wait until training is under way (metrics appear), then kill rank 1.
for _ in $(seq 1 100); do
  [[ -s "$tmp/run/metrics.jsonl" ]] && break
  sleep 0.2
done
[[ -s "$tmp/run/metrics.jsonl" ]] || { echo "FAIL: training never started"; cat "$tmp/log"; kill -9 $mpirun_pid; exit 1; }
victim=$(pgrep -f "run.dir=$tmp/run" | while read -r p; do
  [[ "$(tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -c '^OMPI_COMM_WORLD_RANK=1$')" == 1 ]] && echo "$p"; done | head -n1)
[[ -n "$victim" ]] || { echo "FAIL: rank 1 not found"; kill -9 $mpirun_pid; exit 1; }
start=$(date +%s)
kill -9 "$victim"
for _ in $(seq 1 600); do
  kill -0 $mpirun_pid 2>/dev/null || break
  sleep 0.1
done
if kill -0 $mpirun_pid 2>/dev/null; then
  echo "FAIL: mpirun still running 60 s after rank 1 was killed"; kill -9 $mpirun_pid; exit 1
fi
wait $mpirun_pid; rc=$?
elapsed=$(( $(date +%s) - start ))
left=$(pgrep -f "run.dir=$tmp/run" | wc -l)
echo "mpirun exited with $rc after ${elapsed}s; ranks left: $left"
[[ $rc -ne 0 && $left -eq 0 ]] || { echo "FAIL"; cat "$tmp/log"; exit 1; }
echo "PASS"
