#!/usr/bin/env bash
# Owns the Slurm + PMIx launch test: on the local cluster, MPI ranks started by srun / sbatch form one world.
#
# Usage: tests/slurm/test_srun_mpi.sh BUILD_DIR [CASE...]   (cases: srun_pmix sbatch_pmix; default both)
# Compiles tests/slurm/mpi_hello.c with mpicc into BUILD_DIR/tests/slurm/, starts slurm/local_cluster.sh, runs
# `srun --overcommit --mpi=pmix -n 4 mpi_hello` and the same through `sbatch --wait slurm/single_node.sbatch`,
# checks 4 distinct ranks of one size-4 world with the right Allreduce sum, and stops the cluster on exit.
# To add a case: define case_NAME below (it runs with SLURM_CONF set, under set -e) and list it in CASES.
set -euo pipefail
BUILD_DIR="$(cd "${1:?usage: $0 BUILD_DIR [CASE...]}" && pwd)"
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$BUILD_DIR/tests/slurm"
# shellcheck source=tests/slurm/cluster_lib.sh
source "$ROOT/tests/slurm/cluster_lib.sh"
CASES=("$@")
(( ${#CASES[@]} )) || CASES=(srun_pmix sbatch_pmix moe_train_srun)
NP=4

require_cluster_prereqs mpicc
mkdir -p "$WORK"
HELLO="$WORK/mpi_hello"
mpicc -O1 -o "$HELLO" "$ROOT/tests/slurm/mpi_hello.c"

# srun straight from the submit host: 4 ranks on however many cores (OverSubscribe=FORCE + --overcommit).
case_srun_pmix() {
  local out="$WORK/srun_pmix.out"
  timeout 120 srun --overcommit --mpi=pmix -n "$NP" --job-name=moe-test-srun "$HELLO" > "$out"
  check_mpi_hello "$out" "$NP"
}

# The single-node template itself, with MOE_TRAIN pointing at the MPI check program.
case_sbatch_pmix() {
  local dir="$WORK/sbatch_pmix" jid rc=0
  rm -rf "$dir"; mkdir -p "$dir"
  echo "# placeholder config for test_srun_mpi.sh" > "$dir/config.yaml"
  jid="$(cd "$dir" && MOE_TRAIN="$HELLO" CONFIG=config.yaml \
    timeout 180 sbatch --wait --parsable --ntasks="$NP" --overcommit --time=5 --job-name=moe-test-sbatch \
      --output="$dir/job.out" "$ROOT/slurm/single_node.sbatch")" || rc=$?
  if [[ $rc != 0 ]]; then
    log "sbatch --wait failed (rc $rc); job output:"; cat "$dir/job.out" >&2 2>/dev/null || true; return 1
  fi
  log "job $jid: $(job_field "$jid" JobState) ExitCode=$(job_field "$jid" ExitCode)"
  check_mpi_hello "$dir/job.out" "$NP"
}

# moe-train itself: `srun --mpi=pmix -n 4` (EP2 x DP2, ZeRO-1) gives exactly the mpirun result
# (same layout → bitwise: every metrics line and the final checkpoint's tensors).
case_moe_train_srun() {
  local dir="$WORK/moe_srun"
  rm -rf "$dir"; mkdir -p "$dir"
  head -c 300000 /dev/urandom | od -An -v -tu1 -w1 | awk '{printf "%c", 97 + ($1 % 26)}' > "$dir/text.txt"
  local common=(--set "data.path=$dir/text.txt" --set train.steps=6 --set train.micro_batch=2 --set parallel.ep=2
                --set parallel.zero=1 --set log.every=100)
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 srun --overcommit --mpi=pmix -n 4 "$BUILD_DIR/moe-train" \
    "$ROOT/configs/tiny.yaml" "${common[@]}" --set "run.dir=$dir/srun" > "$dir/srun.log" 2>&1 ||
    { cat "$dir/srun.log" >&2; return 1; }
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    mpirun --oversubscribe --bind-to none -np 4 "$BUILD_DIR/moe-train" "$ROOT/configs/tiny.yaml" "${common[@]}" \
    --set "run.dir=$dir/mpirun" > "$dir/mpirun.log" 2>&1 || { cat "$dir/mpirun.log" >&2; return 1; }
  grep -q "4 rank(s) (ep 2 x expert-dp 2)" "$dir/srun.log" || { log "srun did not form one 4-rank world"; cat "$dir/srun.log" >&2; return 1; }
  # Timing fields differ; every other field must be equal.
  strip() { sed -E 's/"(step_time_s|tok_per_s)":[^,}]*,?//g' "$1"; }
  diff <(strip "$dir/srun/metrics.jsonl") <(strip "$dir/mpirun/metrics.jsonl") >&2 ||
    { log "metrics differ between srun and mpirun"; return 1; }
  "$BUILD_DIR/moe-export" "$dir/srun/checkpoints/step_6.h5" --out "$dir/hf_srun" > /dev/null
  "$BUILD_DIR/moe-export" "$dir/mpirun/checkpoints/step_6.h5" --out "$dir/hf_mpirun" > /dev/null
  cmp "$dir/hf_srun/model.safetensors" "$dir/hf_mpirun/model.safetensors" || { log "final weights differ"; return 1; }
  log "srun and mpirun: identical metrics ($(wc -l < "$dir/srun/metrics.jsonl") steps) and final weights"
}

run_cases "${CASES[@]}"
