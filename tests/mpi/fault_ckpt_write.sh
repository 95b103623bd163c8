#!/usr/bin/env bash
# Owns the checkpoint-write fault test: a write failing on one rank (full tmpfs or MOE_FAULT_INJECT) ends every rank within 60 s, one message, nothing published touched, resume works.
# usage: fault_ckpt_write.sh MOE_TRAIN NP MODE
#   MODE tmpfs     checkpoint.dir on a tmpfs with room for two checkpoints; the third write meets a full disk
#        midwrite  the same with the free-space pre-flight off (MOE_FAULT_INJECT=ckpt_preflight:off): the
#                  full disk is met inside HDF5's collective writes
#        inject0   MOE_FAULT_INJECT=ckpt_write:0:28 (rank 0 fails mid-write with ENOSPC)
#        injectN   MOE_FAULT_INJECT=ckpt_write:<NP-1>:5 (the last rank fails mid-write with EIO)
# Exit 77 (skip) when MODE needs a tmpfs and mount is not permitted here.
set -u
MOE_TRAIN=$1
NP=$2
MODE=$3
here=$(dirname "$0")
source "$here/../ckpt/common.sh"
tmp=$(mktemp -d)
mnt=""
cleanup() { [[ -n "$mnt" ]] && umount "$mnt" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
make_inputs "$tmp"
ck="$tmp/ck"
if [[ $MODE == tmpfs || $MODE == midwrite ]]; then
  mkdir -p "$tmp/mnt"
  # One checkpoint of the tiny model holds ~0.6 MiB of data: room for two, not three.
  if ! mount -t tmpfs -o size=1600k tmpfs "$tmp/mnt" 2>/dev/null; then echo "SKIP: cannot mount a tmpfs here"; exit 77; fi
  mnt="$tmp/mnt"
  ck="$mnt/ck"
fi
launch() {  # launch ENV... -- ARGS...: moe-train on NP ranks (a plain process for NP=1)
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  if (( NP == 1 )); then
    env "${envs[@]}" "$MOE_TRAIN" "$@"
  else
    local x=()
    for e in "${envs[@]}"; do x+=(-x "$e"); done
    mpirun --oversubscribe --bind-to none "${x[@]}" -np "$NP" "$MOE_TRAIN" "$@"
  fi
}
# micro_batch 1 x grad_accum 4 on one rank = 4 micro-batches: every NP of 1, 2, 4 keeps the global batch.
sets=(--set checkpoint.dir="$ck" --set train.micro_batch=1 --set train.grad_accum=$((4 / NP)) --set checkpoint.keep=5)
launch MOE_X=0 -- "$tmp/tiny.yaml" "${sets[@]}" --set train.steps=2 > "$tmp/first.log" 2>&1 ||
  { echo "FAIL: the first run (2 checkpoints) failed"; cat "$tmp/first.log"; exit 1; }
[[ -f "$ck/step_1.h5" && -f "$ck/step_2.h5" && "$(cat "$ck/latest")" == step_2.h5 ]] ||
  { echo "FAIL: the first run did not publish step_1.h5 and step_2.h5"; ls -la "$ck"; exit 1; }
before=$(cd "$ck" && md5sum latest step_1.h5 step_2.h5)
case $MODE in
  tmpfs) inj=MOE_X=0; want="No space left on device" ;;
  midwrite) inj=MOE_FAULT_INJECT=ckpt_preflight:off; want="No space left on device" ;;
  inject0) inj=MOE_FAULT_INJECT=ckpt_write:0:28; want="No space left on device" ;;
  injectN) inj=MOE_FAULT_INJECT=ckpt_write:$((NP - 1)):5; want="Input/output error" ;;
  *) echo "unknown mode $MODE"; exit 2 ;;
esac
start=$(date +%s.%N)
# Its own process group, so a hang can be ended whole (mpirun and every rank).
export -f launch
export NP MOE_TRAIN
setsid bash -c 'launch "$@"' _ "$inj" -- "$tmp/tiny.yaml" "${sets[@]}" --set train.steps=4 --resume auto > "$tmp/fail.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then
  echo "FAIL: still running 60 s after start (a rank hangs)"; kill -9 -- -$pid; sleep 1; cat "$tmp/fail.log"; exit 1
fi
wait $pid; rc=$?
secs=$(echo "$(date +%s.%N) - $start" | bc)
echo "np $NP mode $MODE: exit $rc after ${secs} s (start-up, one step and the failing write)"
fail=0
(( rc != 0 && rc < 128 )) || { echo "FAIL: exit $rc (want non-zero, not a signal)"; fail=1; }
n=$(grep -c "checkpoint write failed" "$tmp/fail.log")
[[ $n -eq 1 ]] || { echo "FAIL: $n 'checkpoint write failed' messages (want one)"; fail=1; }
grep "checkpoint write failed" "$tmp/fail.log" | grep -q "step_3.h5.tmp'.*$want" ||
  { echo "FAIL: the message does not name the file and '$want'"; fail=1; }
! grep -q "HDF5-DIAG" "$tmp/fail.log" || { echo "FAIL: HDF5's error stack was printed"; fail=1; }
left=$(ls -a "$ck" | grep -c '\.tmp$')
[[ $left -eq 0 ]] || { echo "FAIL: $left temporaries left in $ck"; ls -la "$ck"; fail=1; }
[[ ! -e "$ck/step_3.h5" ]] || { echo "FAIL: step_3.h5 was published"; fail=1; }
after=$(cd "$ck" && md5sum latest step_1.h5 step_2.h5)
[[ "$before" == "$after" ]] || { echo "FAIL: latest or a published checkpoint changed"; fail=1; }
(( fail == 0 )) || { cat "$tmp/fail.log"; exit 1; }
# The last good checkpoint is still the one --resume auto takes.
launch MOE_X=0 -- "$tmp/tiny.yaml" "${sets[@]}" --set train.steps=2 --resume auto > "$tmp/resume.log" 2>&1 ||
  { echo "FAIL: resume after the failure exited $?"; cat "$tmp/resume.log"; exit 1; }
grep -q "resumed from .*step_2.h5 at step 2" "$tmp/resume.log" ||
  { echo "FAIL: --resume auto did not continue from step_2.h5"; cat "$tmp/resume.log"; exit 1; }
echo PASS
