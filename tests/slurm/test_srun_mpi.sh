#!/usr/bin/env bash
# Owns the Slurm + PMIx launch test: on the local cluster, MPI ranks started by srun / sbatch form one world.
#
# Usage: tests/slurm/test_srun_mpi.sh BUILD_DIR [CASE...]   (cases: see CASES below; default all)
# Compiles tests/slurm/mpi_hello.c with mpicc into BUILD_DIR/tests/slurm/, starts slurm/local_cluster.sh, runs
# `srun --overcommit --mpi=pmix -n 4 mpi_hello` and the same through `sbatch --wait slurm/single_node.sbatch`, moe-train
# and moe-bench (slurm/moe_bench_sweep.sbatch) under srun / sbatch,
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
(( ${#CASES[@]} )) || CASES=(srun_pmix sbatch_pmix moe_train_srun moe_bench_sbatch srun_yield two_clusters)
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
  # Timing fields (and the throughput derived from them) differ; every other field must be equal.
  strip() { sed -E 's/"(step_time_s|tok_per_s|model_tflops|mfu)":[^,}]*,?//g' "$1"; }
  diff <(strip "$dir/srun/metrics.jsonl") <(strip "$dir/mpirun/metrics.jsonl") >&2 ||
    { log "metrics differ between srun and mpirun"; return 1; }
  "$BUILD_DIR/moe-export" "$dir/srun/checkpoints/step_6.h5" --out "$dir/hf_srun" > /dev/null
  "$BUILD_DIR/moe-export" "$dir/mpirun/checkpoints/step_6.h5" --out "$dir/hf_mpirun" > /dev/null
  cmp "$dir/hf_srun/model.safetensors" "$dir/hf_mpirun/model.safetensors" || { log "final weights differ"; return 1; }
  log "srun and mpirun: identical metrics ($(wc -l < "$dir/srun/metrics.jsonl") steps) and final weights"
}

# The routing-overhead sweep as a batch job (slurm/moe_bench_sweep.sbatch): 2 tasks, CI's --tiny sweep, EP 1 and 2
# from the task count; the job writes the CSV, JSON, cost model and scaling table and prints the held-out error.
case_moe_bench_sbatch() {
  local dir="$WORK/moe_bench_sbatch" jid rc=0
  rm -rf "$dir"; mkdir -p "$dir"
  jid="$(cd "$ROOT" && MOE_BENCH="$BUILD_DIR/moe-bench" OUT="$dir/out" BENCH_ARGS="--tiny" PLOT_PYTHON=/nonexistent \
    OMP_NUM_THREADS=1 timeout 240 sbatch --wait --parsable --ntasks=2 --overcommit --time=5 --job-name=moe-test-bench \
      --output="$dir/job.out" "$ROOT/slurm/moe_bench_sweep.sbatch")" || rc=$?
  if [[ $rc != 0 ]]; then
    log "sbatch --wait failed (rc $rc); job output:"; cat "$dir/job.out" >&2 2>/dev/null || true; return 1
  fi
  log "job $jid: $(job_field "$jid" JobState) ExitCode=$(job_field "$jid" ExitCode)"
  grep -q "2 tasks, device cpu, ep {1,2}" "$dir/job.out" || { log "job did not sweep ep {1,2}"; cat "$dir/job.out" >&2; return 1; }
  grep -Eq "held-out prediction error: layer [0-9.]+ %" "$dir/job.out" || { log "no held-out error"; cat "$dir/job.out" >&2; return 1; }
  for f in moe_bench.csv moe_bench.json cost_model.json scaling_table.md; do
    [[ -s "$dir/out/$f" ]] || { log "$f missing"; return 1; }
  done
  (( $(wc -l < "$dir/out/moe_bench.csv") == 49 )) || { log "moe_bench.csv has $(wc -l < "$dir/out/moe_bench.csv") lines, want 49"; return 1; }
  log "moe_bench_sweep.sbatch: 48 configurations over 2 srun tasks, cost model written"
}

# More ranks than cores under srun: ranks must yield while they wait, as under mpirun --oversubscribe (which
# turns on OpenMPI's yield itself). Before moe-train set it for srun, the same 20 steps took 81.6 s under srun
# and 3.4 s under mpirun on 2 cores (OMP_NUM_THREADS=1 both), and the README's srun line (no OMP_NUM_THREADS)
# 197 s. Both srun forms must stay within 3x (+3 s of start-up) of the mpirun run, measured side by side.
case_srun_yield() {
  local dir="$WORK/srun_yield" t0 ref t_srun t_plain limit
  rm -rf "$dir"; mkdir -p "$dir"
  head -c 300000 /dev/urandom | od -An -v -tu1 -w1 | awk '{printf "%c", 97 + ($1 % 26)}' > "$dir/text.txt"
  local common=("$ROOT/configs/tiny.yaml" --set "data.path=$dir/text.txt" --set train.steps=20 --set parallel.ep=2
                --set log.every=100)
  t0=$(date +%s%N)
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
    timeout 120 mpirun --oversubscribe --bind-to none -np 4 "$BUILD_DIR/moe-train" "${common[@]}" \
    --set "run.dir=$dir/mpirun" > "$dir/mpirun.log" 2>&1 || { cat "$dir/mpirun.log" >&2; return 1; }
  ref=$(( ($(date +%s%N) - t0) / 1000000 ))
  limit=$(( 3 * ref + 3000 ))
  t0=$(date +%s%N)
  OMP_NUM_THREADS=1 timeout $(( limit / 1000 + 60 )) srun --overcommit --mpi=pmix -n 4 "$BUILD_DIR/moe-train" \
    "${common[@]}" --set "run.dir=$dir/srun" > "$dir/srun.log" 2>&1 || { cat "$dir/srun.log" >&2; return 1; }
  t_srun=$(( ($(date +%s%N) - t0) / 1000000 ))
  t0=$(date +%s%N)
  env -u OMP_NUM_THREADS -u OMP_WAIT_POLICY timeout $(( limit / 1000 + 60 )) srun --overcommit --mpi=pmix -n 4 \
    "$BUILD_DIR/moe-train" "${common[@]}" --set "run.dir=$dir/plain" > "$dir/plain.log" 2>&1 ||
    { cat "$dir/plain.log" >&2; return 1; }
  t_plain=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "20 steps, 4 ranks on $(nproc) CPUs: mpirun ${ref} ms, srun ${t_srun} ms, srun without OMP_NUM_THREADS ${t_plain} ms (limit ${limit} ms)"
  grep -q "OMPI_MCA_mpi_yield_when_idle=1" "$dir/srun.log" || { log "srun run did not report the yield setting"; return 1; }
  (( t_srun <= limit && t_plain <= limit )) || { log "srun is more than 3x slower than mpirun"; return 1; }
}

# Two local clusters side by side (this one and a second in another private dir): their ports, job ids and
# per-job tmp dirs differ, and MPI jobs run on both at once.
case_two_clusters() {
  local other out="" conf_a="$SLURM_CONF" conf_b ok=1
  other="$(mktemp -d "$CLUSTER_BASE/moe-slurm-test.XXXXXX")"; chmod 0755 "$other"; echo $$ > "$other/owner.pid"
  out="$(bash "$CLUSTER_SH" start --dir "$other")" || { log "second cluster did not start"; rm -rf "$other"; return 1; }
  conf_b="$other/slurm.conf"
  field() { sed -n "s/^$1=//p" "$2"; }
  for k in SlurmctldPort SlurmdPort FirstJobId TmpFS ClusterName; do
    [[ -n "$(field $k "$conf_a")" && "$(field $k "$conf_a")" != "$(field $k "$conf_b")" ]] ||
      { log "both clusters have $k='$(field $k "$conf_a")'"; ok=0; }
  done
  [[ "$(field TmpFS "$conf_b")" == "$other/"* ]] || { log "TmpFS of the second cluster is outside its dir"; ok=0; }
  SLURM_CONF="$conf_a" timeout 120 srun --overcommit --mpi=pmix -n 2 "$HELLO" > "$WORK/two_a.out" & local pa=$!
  SLURM_CONF="$conf_b" timeout 120 srun --overcommit --mpi=pmix -n 2 "$HELLO" > "$WORK/two_b.out" & local pb=$!
  wait $pa || { log "srun on the first cluster failed"; ok=0; }
  wait $pb || { log "srun on the second cluster failed"; ok=0; }
  check_mpi_hello "$WORK/two_a.out" 2 || ok=0
  check_mpi_hello "$WORK/two_b.out" 2 || ok=0
  bash "$CLUSTER_SH" stop --dir "$other" >/dev/null 2>&1 || true
  rm -rf "$other"
  [[ $ok == 1 ]]
}

run_cases "${CASES[@]}"
