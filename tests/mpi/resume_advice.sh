#!/usr/bin/env bash
# Owns the resume-advice test: when a resume cannot keep the global batch, the advice it prints keeps micro_batch, seq_len and B, and following it resumes.
# Checkpoint: 1 rank, micro_batch 2 x grad_accum 4, seq_len 16 (B = 8 sequences = 4 micro-batches).
set -u
MOE_TRAIN=$1
here=$(dirname "$0")
source "$here/../ckpt/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make_inputs "$tmp"
base=(--set train.micro_batch=2 --set train.grad_accum=4 --set train.seq_len=16)
"$MOE_TRAIN" "$tmp/tiny.yaml" "${base[@]}" --set train.steps=1 > "$tmp/a.log" 2>&1 || { echo "FAIL: first run"; cat "$tmp/a.log"; exit 1; }
ck="$tmp/run/checkpoints/step_1.h5"
run_np() {  # run_np NP ARGS...
  local np=$1
  shift
  if (( np == 1 )); then timeout 120 "$MOE_TRAIN" "$@"
  else timeout 120 mpirun --oversubscribe --bind-to none -np "$np" "$MOE_TRAIN" "$@"; fi
}
fail=0
# try NAME NP ADVICE_REGEX FOLLOW_NP SETS...: the resume with SETS on NP ranks is refused (exit 2) with advice
# matching ADVICE_REGEX; the first `--set ...` list of the advice (for FOLLOW_NP ranks) then resumes.
try() {
  local name=$1 np=$2 want=$3 follow_np=$4
  shift 4
  run_np "$np" "$tmp/tiny.yaml" "${base[@]}" "$@" --set train.steps=2 --resume "$ck" > "$tmp/$name.log" 2>&1
  local rc=$?
  local msg
  msg=$(grep -m1 "global batch must stay fixed" "$tmp/$name.log")
  if [[ $rc -ne 2 || -z "$msg" ]]; then echo "FAIL [$name]: exit $rc, want 2 with the global-batch message"; tail -3 "$tmp/$name.log"; fail=1; return; fi
  echo "[$name] ${msg#*now: }"
  if ! grep -qE -- "$want" <<< "$msg"; then echo "FAIL [$name]: advice does not match /$want/"; fail=1; return; fi
  # The advised settings for FOLLOW_NP ranks: the --set list after "keep it with" or "on N rank(s) with".
  local adv
  if (( follow_np == np )); then adv=$(grep -oE "keep it with( --set [a-z_.]+=[0-9]+)+" <<< "$msg")
  else adv=$(grep -oE "on $follow_np ranks? with( --set [a-z_.]+=[0-9]+)+" <<< "$msg"); fi
  read -r -a follow <<< "$(grep -oE -- "--set [a-z_.]+=[0-9]+" <<< "$adv" | tr '\n' ' ')"
  [[ ${#follow[@]} -gt 0 ]] || { echo "FAIL [$name]: no --set settings in the advice"; fail=1; return; }
  run_np "$follow_np" "$tmp/tiny.yaml" "${base[@]}" "$@" "${follow[@]}" --set train.steps=2 --resume "$ck" \
    > "$tmp/$name.follow.log" 2>&1
  rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q "resumed from .*step_1.h5 at step 1" "$tmp/$name.follow.log"; then
    echo "FAIL [$name]: following the advice (${follow[*]} on $follow_np ranks) exited $rc"; tail -3 "$tmp/$name.follow.log"; fail=1
  else
    echo "ok [$name]: ${follow[*]} on $follow_np rank(s) resumes"
  fi
}
# micro_batch 4 on 2 ranks: the micro_batch must return to 2, then grad_accum 2 keeps B = 8.
try mb4_np2 2 "keep it with --set train.micro_batch=2 --set train.grad_accum=2( |$)" 2 --set train.micro_batch=4 --set train.grad_accum=1
# 3 ranks: 4 micro-batches cannot split over 3 ranks; 1, 2 or 4 ranks can.
try np3 3 "no train.grad_accum keeps it on 3 ranks.*on 1 rank with --set train.grad_accum=4, on 2 ranks with --set train.grad_accum=2, or on 4 ranks with --set train.grad_accum=1" 2
# another seq_len on 1 rank: seq_len back to 16, grad_accum as it was.
try seq8 1 "keep it with --set train.seq_len=16 --set train.grad_accum=4( |$)" 1 --set train.seq_len=8
(( fail == 0 )) || exit 1
echo PASS
