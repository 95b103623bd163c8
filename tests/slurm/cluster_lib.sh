# Owns the shared helpers of the Slurm tests (sourced): with_cluster, run_cases, MPI-output and job-state checks.
# shellcheck shell=bash
#
# A test script sets ROOT (repository root) and WORK (scratch dir), sources this file, defines case_<name>
# functions and calls `run_cases NAME...`. The first with_cluster starts the local cluster (slurm/local_cluster.sh,
# dir $MOE_SLURM_TEST_DIR, default a fresh /tmp/moe-slurm-test.XXXXXX) and an EXIT trap stops it, even when a case
# fails or the script is interrupted. Exit codes: 0 all cases passed, 1 a case failed, 77 skipped (not root, or
# slurm-wlm / munge / mpicc missing).

# One private cluster dir per test run (mktemp under /tmp/moe-slurm-test.*), so two test runs on one machine
# (even of the same build dir) and a user's own cluster (/tmp/moe-slurm) never share a directory, socket, port
# or job id (local_cluster.sh draws ports and FirstJobId per start). The dir records the test's pid: a later run
# stops and removes the clusters of runs that died without cleaning up (killed by a CTest timeout, say).
CLUSTER_BASE="${MOE_SLURM_TEST_BASE:-/tmp}"
CLUSTER_DIR="${MOE_SLURM_TEST_DIR:-}"
CLUSTER_SH="$ROOT/slurm/local_cluster.sh"
_cluster_up=0

log() { echo "[slurm-test $(date +%H:%M:%S)] $*" >&2; }

# Skip (exit 77) unless this machine can host the local cluster.
require_cluster_prereqs() {
  if [[ $EUID -ne 0 ]]; then log "SKIP: the local Slurm cluster needs root (SlurmUser=root)"; exit 77; fi
  local b
  for b in slurmctld slurmd srun sbatch squeue scontrol munged "$@"; do
    command -v "$b" >/dev/null || { log "SKIP: '$b' not installed (launch/setup.sh installs slurm-wlm, munge, openmpi)"; exit 77; }
  done
}

_stop_cluster() {
  local rc=$?
  if [[ $_cluster_up == 1 ]]; then
    if [[ $rc != 0 ]]; then
      log "failure: tails of the cluster logs in $CLUSTER_DIR/log"
      tail -n 20 "$CLUSTER_DIR"/log/slurmctld.log "$CLUSTER_DIR"/log/slurmd.log >&2 2>/dev/null || true
    fi
    bash "$CLUSTER_SH" stop --dir "$CLUSTER_DIR" || true
    # A private dir goes too (kept on failure for its logs, until the next run reaps it).
    if [[ ${_cluster_private:-0} == 1 && $rc == 0 ]]; then rm -rf "$CLUSTER_DIR"; fi
    _cluster_up=0
  fi
  exit "$rc"
}

# Stops and removes test clusters whose owning test process is gone.
reap_stale_clusters() {
  local d pid
  for d in "$CLUSTER_BASE"/moe-slurm-test.*; do
    [[ -d "$d" && -f "$d/owner.pid" ]] || continue
    pid="$(tr -dc '0-9' < "$d/owner.pid")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && continue
    log "removing the cluster of a test run that is gone (pid ${pid:-?}): $d"
    bash "$CLUSTER_SH" stop --dir "$d" >/dev/null 2>&1 || true
    rm -rf "$d"
  done
}

# with_cluster CMD...: run CMD with the local cluster up and SLURM_CONF exported.
with_cluster() {
  if [[ $_cluster_up == 0 ]]; then
    local out t0=$SECONDS
    trap _stop_cluster EXIT
    trap 'exit 130' INT TERM
    _cluster_up=1
    reap_stale_clusters
    if [[ -z "$CLUSTER_DIR" ]]; then
      CLUSTER_DIR="$(mktemp -d "$CLUSTER_BASE/moe-slurm-test.XXXXXX")"
      chmod 0755 "$CLUSTER_DIR"  # munged (user munge) reaches its socket dir through it
      _cluster_private=1
    fi
    echo $$ > "$CLUSTER_DIR/owner.pid"
    out="$(bash "$CLUSTER_SH" start --dir "$CLUSTER_DIR")" || { log "local cluster did not start"; return 1; }
    eval "$out"
    # A reused cluster may hold jobs of an earlier run that was killed (e.g. by a CTest timeout): cancel them.
    local stale
    stale="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
    if [[ -n "${stale// /}" ]]; then
      log "cancelling leftover jobs: $stale"
      # shellcheck disable=SC2086
      scancel $stale || true
      # shellcheck disable=SC2016  # expanded by the inner bash
      wait_for 30 "leftover jobs to end" bash -c '[[ -z "$(squeue -h -t PD,R,CG,S -o %i)" ]]' || true
    fi
    log "cluster up in $((SECONDS - t0))s (SLURM_CONF=$SLURM_CONF)"
  fi
  "$@"
}

# run_cases NAME...: run case_NAME for each, with the cluster up; report each; fail if any failed.
run_cases() {
  local c failed=() t0
  with_cluster true || { log "FAILED: the local cluster did not start"; return 1; }
  for c in "$@"; do
    declare -F "case_$c" >/dev/null || { log "unknown case '$c'"; failed+=("$c"); continue; }
    t0=$SECONDS
    log "case $c: start"
    # Each case runs in a subshell under set -e; the cluster (started above) and its EXIT trap stay in this shell.
    if ( set -euo pipefail; "case_$c" ); then
      log "case $c: PASS ($((SECONDS - t0))s)"
    else
      log "case $c: FAIL ($((SECONDS - t0))s)"
      failed+=("$c")
    fi
  done
  if (( ${#failed[@]} )); then log "FAILED: ${failed[*]}"; return 1; fi
  log "all passed: $*"
}

# check_mpi_hello FILE N: FILE holds the output of N ranks of tests/slurm/mpi_hello.c that formed one world.
check_mpi_hello() {
  local file="$1" n="$2" lines ranks want_sum=$(( $2 * ($2 + 1) / 2 ))
  lines="$(grep '^mpi_hello ' "$file" || true)"
  if [[ "$(grep -c . <<<"$lines")" != "$n" ]]; then
    log "expected $n mpi_hello lines in $file, got:"; cat "$file" >&2; return 1
  fi
  ranks="$(sed -n 's/.* rank=\([0-9-]*\) .*/\1/p' <<<"$lines" | sort -n | tr '\n' ' ')"
  if [[ "$ranks" != "$(seq -s ' ' 0 $((n - 1))) " ]]; then
    log "expected ranks 0..$((n - 1)), got '$ranks' (singleton starts mean PMIx is not wired):"; cat "$file" >&2; return 1
  fi
  if grep -v " size=$n sum=$want_sum " <<<"$lines" >&2; then
    log "lines above lack size=$n sum=$want_sum"; return 1
  fi
  # Rank from MPI must be the one Slurm and PMIx gave the task.
  if grep -Ev ' rank=([0-9]+) .* slurm_procid=\1 .* pmix_rank=\1$' <<<"$lines" >&2; then
    log "lines above: MPI rank differs from SLURM_PROCID/PMIX_RANK"; return 1
  fi
}

# job_field JOBID FIELD: a field of `scontrol show job` (JobState, Restarts, ExitCode, ...).
job_field() {
  scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds; fail after SECONDS.
wait_for() {
  local limit="$1" what="$2" t0=$SECONDS; shift 2
  until "$@"; do
    (( SECONDS - t0 < limit )) || { log "timed out after ${limit}s waiting for $what"; return 1; }
    sleep 0.5
  done
}
