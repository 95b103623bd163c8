#!/usr/bin/env bash
# Owns a stand-in for moe-train in the Slurm requeue test: steps, SIGUSR1 -> checkpoint + exit 0, --resume auto.
#
# Usage (as srun task): fake_train.sh CONFIG [--resume auto]. Works in the current directory: rank 0 keeps the
# last completed step in ./ckpt. FAKE_STEPS (default 40) steps of FAKE_STEP_S (default 0.2) seconds each.
set -u
steps="${FAKE_STEPS:-40}" dt="${FAKE_STEP_S:-0.2}" rank="${SLURM_PROCID:-0}"
stop=0
trap 'stop=1' USR1 TERM
step=0
[[ " $* " == *" --resume auto "* && -s ckpt ]] && step="$(cat ckpt)"
echo "fake_train rank=$rank start step=$step restart=${SLURM_RESTART_COUNT:-0} args=$*"
while (( step < steps )); do
  sleep "$dt" & wait $! || true
  if (( stop )); then
    [[ $rank == 0 ]] && echo "$step" > ckpt.tmp && mv ckpt.tmp ckpt
    echo "fake_train rank=$rank checkpoint step=$step"
    exit 0
  fi
  step=$((step + 1))
  [[ $rank == 0 ]] && echo "$step" > progress
done
[[ $rank == 0 ]] && echo "$step" > ckpt
echo "fake_train rank=$rank done step=$step"
