#!/usr/bin/env bash
# Owns the preemption test: slurm/preemptible.sbatch forwards USR1 to the step, requeues, and resumes (--resume auto).
#
# Usage: tests/slurm/test_preempt_requeue.sh BUILD_DIR [CASE...]   (cases: usr1_requeue; default all)
# Runs the template on the local cluster with tests/slurm/fake_train.sh as MOE_TRAIN (2 ranks), sends SIGUSR1 to
# the batch shell the way `--signal=B:USR1@120` does (scancel --signal=USR1 --batch), and checks: both ranks
# checkpoint and exit, the job is requeued with the same id (Restarts=1), the second start resumes past step 0,
# and the job completes with exit 0. Slurm holds a requeued job ~2 min (Reason=BeginTime); the test releases it
# with `scontrol update JobId=ID StartTime=now`.
set -euo pipefail
BUILD_DIR="$(cd "${1:?usage: $0 BUILD_DIR [CASE...]}" && pwd)"
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$BUILD_DIR/tests/slurm"
# shellcheck source=tests/slurm/cluster_lib.sh
source "$ROOT/tests/slurm/cluster_lib.sh"
CASES=("$@")
(( ${#CASES[@]} )) || CASES=(usr1_requeue moe_train_requeue)

require_cluster_prereqs scancel
mkdir -p "$WORK"

case_usr1_requeue() {
  local dir="$WORK/preempt" jid out
  rm -rf "$dir"; mkdir -p "$dir"
  out="$dir/job.out"
  echo "# placeholder config for test_preempt_requeue.sh" > "$dir/config.yaml"
  jid="$(cd "$dir" && MOE_TRAIN="$ROOT/tests/slurm/fake_train.sh" CONFIG=config.yaml FAKE_STEPS=40 \
    sbatch --parsable --ntasks=2 --overcommit --time=10 --job-name=moe-test-preempt --output="$out" \
      "$ROOT/slurm/preemptible.sbatch")"
  log "submitted job $jid"
  # Signal only once rank 0 has made progress, as a real time-limit signal would (its handler is installed).
  wait_for 60 "job $jid to run a few steps" test -s "$dir/progress"
  wait_for 30 "job $jid past step 2" bash -c "(( \$(cat '$dir/progress') >= 2 ))"
  scancel --signal=USR1 --batch "$jid"
  wait_for 60 "job $jid to be requeued" bash -c "[[ \"\$(scontrol -o show job $jid)\" == *JobState=PENDING*Restarts=1* ]]"
  # Release it early, but not within the second of the requeue: slurmd revoked the old job credential, and a
  # restart whose credential carries the same timestamp dies with "Job credential revoked" (why Slurm waits).
  # shellcheck disable=SC2016  # expanded by the inner bash
  wait_for 30 "the node to finish the first run" bash -c '[[ "$(sinfo -h -o %T)" == idle ]]'
  sleep 2
  scontrol update JobId="$jid" StartTime=now
  wait_for 90 "job $jid to end" bash -c "[[ \"\$(scontrol -o show job $jid)\" =~ JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) ]]"
  log "job $jid: $(job_field "$jid" JobState) Restarts=$(job_field "$jid" Restarts) ExitCode=$(job_field "$jid" ExitCode)"
  local ck
  ck="$(sed -n 's/^fake_train rank=0 checkpoint step=\([0-9]*\)$/\1/p' "$out")"
  local ok=1
  grep -q 'preemptible.sbatch: SIGUSR1 received' "$out" || { log "batch shell did not trap USR1"; ok=0; }
  grep -q '^fake_train rank=1 checkpoint step=' "$out" || { log "USR1 did not reach rank 1 of the step"; ok=0; }
  [[ -n "$ck" && "$ck" -ge 2 ]] || { log "rank 0 did not checkpoint at step >= 2 (got '$ck')"; ok=0; }
  grep -q "requeueing job $jid" "$out" || { log "no scontrol requeue"; ok=0; }
  grep -q "^job $jid start 1 " "$out" || { log "no second start (SLURM_RESTART_COUNT=1)"; ok=0; }
  for r in 0 1; do
    grep -q "^fake_train rank=$r start step=$ck restart=1 args=config.yaml --resume auto" "$out" ||
      { log "rank $r did not resume at step $ck with --resume auto"; ok=0; }
    grep -q "^fake_train rank=$r done step=40" "$out" || { log "rank $r did not finish"; ok=0; }
  done
  [[ "$(job_field "$jid" JobState)" == COMPLETED && "$(job_field "$jid" ExitCode)" == 0:0 &&
     "$(job_field "$jid" Restarts)" == 1 ]] || { log "final JobState/ExitCode/Restarts wrong"; ok=0; }
  if [[ $ok != 1 ]]; then log "job output:"; cat "$out" >&2; return 1; fi
}

# The real moe-train through slurm/preemptible.sbatch (2 ranks): USR1 → checkpoint → requeue → --resume auto;
# the finished job's final weights are bitwise those of an uninterrupted 2-rank run.
case_moe_train_requeue() {
  local dir="$WORK/preempt_moe" jid out steps=400
  rm -rf "$dir"; mkdir -p "$dir"
  out="$dir/job.out"
  head -c 300000 /dev/urandom | od -An -v -tu1 -w1 | awk '{printf "%c", 97 + ($1 % 26)}' > "$dir/text.txt"
  local args="--set data.path=$dir/text.txt --set train.steps=$steps --set train.micro_batch=2 --set log.every=1000"
  # Uninterrupted reference with the same layout.
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    mpirun --oversubscribe --bind-to none -np 2 "$BUILD_DIR/moe-train" "$ROOT/configs/tiny.yaml" $args \
    --set "run.dir=$dir/ref" > "$dir/ref.log" 2>&1 || { cat "$dir/ref.log" >&2; return 1; }
  jid="$(cd "$dir" && MOE_TRAIN="$BUILD_DIR/moe-train" CONFIG="$ROOT/configs/tiny.yaml" \
    MOE_ARGS="$args --set run.dir=$dir/run" OMP_NUM_THREADS=1 \
    sbatch --parsable --ntasks=2 --overcommit --time=10 --job-name=moe-train-preempt --output="$out" \
      "$ROOT/slurm/preemptible.sbatch")"
  log "submitted job $jid"
  wait_for 90 "job $jid to train a few steps" bash -c "[[ -s '$dir/run/metrics.jsonl' && \$(wc -l < '$dir/run/metrics.jsonl') -ge 5 ]]"
  scancel --signal=USR1 --batch "$jid"
  wait_for 60 "job $jid to be requeued" bash -c "[[ \"\$(scontrol -o show job $jid)\" == *JobState=PENDING*Restarts=1* ]]"
  # shellcheck disable=SC2016
  wait_for 30 "the node to finish the first run" bash -c '[[ "$(sinfo -h -o %T)" == idle ]]'
  sleep 2
  scontrol update JobId="$jid" StartTime=now
  wait_for 180 "job $jid to end" bash -c "[[ \"\$(scontrol -o show job $jid)\" =~ JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) ]]"
  local ok=1
  grep -q "stop signal: checkpoint" "$out" || { log "moe-train did not checkpoint on USR1"; ok=0; }
  grep -q "resumed from .*step_[0-9]*.h5" "$out" || { log "the requeued start did not resume"; ok=0; }
  [[ "$(job_field "$jid" JobState)" == COMPLETED && "$(job_field "$jid" Restarts)" == 1 ]] ||
    { log "final JobState/Restarts wrong"; ok=0; }
  "$BUILD_DIR/moe-export" "$dir/run/checkpoints/step_$steps.h5" --out "$dir/hf_run" > /dev/null 2>&1 || ok=0
  "$BUILD_DIR/moe-export" "$dir/ref/checkpoints/step_$steps.h5" --out "$dir/hf_ref" > /dev/null 2>&1 || ok=0
  cmp "$dir/hf_run/model.safetensors" "$dir/hf_ref/model.safetensors" || { log "final weights differ from the uninterrupted run"; ok=0; }
  [[ "$(wc -l < "$dir/run/metrics.jsonl")" == "$steps" ]] || { log "metrics.jsonl does not hold each step once"; ok=0; }
  if [[ $ok != 1 ]]; then log "job output:"; cat "$out" >&2; return 1; fi
  log "preempted at $(grep -o 'step_[0-9]*.h5 written after step [0-9]*' "$out" | head -1); resumed; final weights bitwise equal"
}

run_cases "${CASES[@]}"
