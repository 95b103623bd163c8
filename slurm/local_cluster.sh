#!/usr/bin/env bash
# Owns the single-machine test Slurm cluster (munged + slurmctld + slurmd under one scratch dir): start|stop|status.
#
# Usage (as root):
#   slurm/local_cluster.sh start  [--dir DIR] [--gpus N] [--timeout S]
#   slurm/local_cluster.sh stop   [--dir DIR]
#   slurm/local_cluster.sh status [--dir DIR]
# then, in the calling shell:  export SLURM_CONF=DIR/slurm.conf   (start prints this line on stdout;
#   `eval "$(slurm/local_cluster.sh start)"` sets it; all progress messages go to stderr).
#
# Environment (flags win):
#   MOE_SLURM_DIR      scratch dir for conf, state, spool, logs, pid files, munge socket (default /tmp/moe-slurm)
#   MOE_SLURM_GPUS     GPUs to declare as GRES gpu on the node (default 0; files /dev/nvidia0.. must exist).
#                      Slurm then sets CUDA_VISIBLE_DEVICES per step (--gpus-per-task=1: one GPU per task).
#   MOE_SLURM_GPU_DEV  device-file prefix for those GPUs (default /dev/nvidia); must be character/block devices,
#                      which Slurm checks (a mknod'ed stand-in works for testing GRES without GPUs)
#   MOE_SLURM_TIMEOUT  seconds to wait for the node to become idle (default 60)
#
# What it builds (docs/DESIGN.md, "Slurm"): a private munged (socket DIR/munge/munge.socket, key /etc/munge/munge.key when it
# is a sane munge-owned key, else a fresh key in DIR/munge), and slurm.conf with SlurmUser=root, free TCP ports,
# proctrack/linuxproc, task/none, MpiDefault=pmix, per-cluster TmpFS (DIR/tmp: PMIx's per-step dirs) and job ids
# from a random FirstJobId (two clusters on one machine never share a job id, port or directory), select/cons_tres + CR_CPU, CPUs=nproc, partition "debug"
# with OverSubscribe=FORCE:4 (so `srun --overcommit -n 4` fits on 2 cores). `start` is idempotent: a healthy running
# cluster is reused as is; anything half-dead (after a crash or an unclean stop) is stopped and started fresh
# (job state is wiped, old logs are kept as *.log.prev). `stop` cancels jobs, then kills the daemons by their pid
# files (and munged, which is always this script's own).
set -euo pipefail

die() { echo "local_cluster: error: $*" >&2; exit 1; }
say() { echo "local_cluster: $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }
cmd="${1:-}"
if [[ -n "$cmd" ]]; then shift; fi
case "$cmd" in -h|--help|help) usage; exit 0 ;; esac
DIR="${MOE_SLURM_DIR:-/tmp/moe-slurm}"
GPUS="${MOE_SLURM_GPUS:-0}"
TIMEOUT="${MOE_SLURM_TIMEOUT:-60}"
GPU_DEV="${MOE_SLURM_GPU_DEV:-/dev/nvidia}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --gpus) GPUS="${2:?--gpus needs a value}"; shift 2 ;;
    --gpus=*) GPUS="${1#--gpus=}"; shift ;;
    --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#--timeout=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (usage: $0 start|stop|status [--dir DIR] [--gpus N] [--timeout S])" ;;
  esac
done
case "$cmd" in start|stop|status) ;; *) die "usage: $0 start|stop|status [--dir DIR] [--gpus N] [--timeout S]" ;; esac
[[ "$GPUS" =~ ^[0-9]+$ ]] || die "--gpus must be a count, got '$GPUS'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be seconds, got '$TIMEOUT'"
if [[ $cmd != status && $EUID -ne 0 ]]; then die "must run as root (SlurmUser=root, munged runs as user munge)"; fi
if [[ $cmd == start ]]; then mkdir -p "$DIR"; fi
[[ -d "$DIR" ]] && DIR="$(cd "$DIR" && pwd -P)"

CONF="$DIR/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_PID="$MUNGE_DIR/munged.pid"
CTLD_PID="$DIR/run/slurmctld.pid"
SLURMD_PID="$DIR/run/slurmd.pid"
CTLD_LOG="$DIR/log/slurmctld.log"
SLURMD_LOG="$DIR/log/slurmd.log"
MUNGE_LOG="$MUNGE_DIR/munged.log"
HOST="$(hostname -s)"

# pid from a pid file if that process is alive, else empty.
live_pid() {
  local f="$1" p
  [[ -f "$f" ]] || return 0
  p="$(tr -dc '0-9' < "$f" 2>/dev/null || true)"
  [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null && ! is_zombie "$p" && echo "$p"
  return 0
}

is_zombie() {  # a killed daemon stays a zombie until init reaps it; kill -0 still succeeds on it.
  local st
  st="$( { cut -d')' -f2 < "/proc/$1/stat"; } 2>/dev/null || true)"
  [[ "$st" == " Z"* || "$st" == " X"* ]]
}

# pids of daemons started with this DIR's files on their command line (pid files lost, e.g. DIR was wiped).
orphan_pids() {
  local p cl
  for p in /proc/[0-9]*; do
    cl="$( { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null || true)"
    case "$cl" in
      *slurmctld\ *-f\ "$CONF"\ *|*slurmd\ *-f\ "$CONF"\ *|*munged\ *--socket="$MUNGE_SOCKET"\ *) echo "${p#/proc/}" ;;
    esac
  done
}

kill_wait() {  # kill_wait NAME PID...: TERM, wait up to 10 s, then KILL.
  local name="$1"; shift
  local p i
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 1 100); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && ! is_zombie "$p" && alive=1; done
    [[ $alive == 0 ]] && return 0
    sleep 0.1
  done
  say "$name did not exit on SIGTERM; sending SIGKILL"
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}

log_tails() {
  local f
  for f in "$MUNGE_LOG" "$CTLD_LOG" "$SLURMD_LOG"; do
    [[ -f "$f" ]] || continue
    echo "----- tail -n 25 $f -----" >&2
    tail -n 25 "$f" >&2 || true
  done
}

munge_ok() {
  [[ -S "$MUNGE_SOCKET" ]] && munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

node_state() {
  [[ -f "$CONF" ]] || return 0
  SLURM_CONF="$CONF" timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n1 || true
}

healthy() {
  [[ -f "$CONF" ]] && [[ -n "$(live_pid "$MUNGE_PID")" ]] && [[ -n "$(live_pid "$CTLD_PID")" ]] &&
    [[ -n "$(live_pid "$SLURMD_PID")" ]] && munge_ok &&
    [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]  # a suffix (*, ~, #, ...) means not responding/powered/...
}

gpus_match() {  # the running conf declares the GPU count asked for
  if (( GPUS > 0 )); then grep -q " Gres=gpu:$GPUS " "$CONF"; elif grep -q "Gres=gpu:" "$CONF"; then return 1; fi
}

# A TCP port that nothing listens on, from START upward, not in the space-separated list $2.
free_port() {
  local port="$1" avoid="${2:-}" used
  used=" $(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u | tr '\n' ' ') "
  while [[ "$used" == *" $port "* || " $avoid " == *" $port "* ]]; do port=$((port + 1)); done
  (( port < 65536 )) || die "no free TCP port found"
  echo "$port"
}

do_stop() {
  local quiet="${1:-}" p
  if [[ -f "$CONF" && -n "$(live_pid "$CTLD_PID")" ]]; then
    local jobs
    jobs="$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)"
    if [[ -n "${jobs// /}" ]]; then
      say "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 50); do
        [[ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -t R,CG,PD -o %i 2>/dev/null || true)" ]] && break
        sleep 0.2
      done
    fi
  fi
  local d c
  d="$(live_pid "$SLURMD_PID")"; c="$(live_pid "$CTLD_PID")"
  if [[ -n "$d$c" ]]; then
    [[ -n "$quiet" ]] || say "stopping slurmd (${d:-not running}) and slurmctld (${c:-not running})"
    # shellcheck disable=SC2086
    kill_wait "slurm daemons" $d $c
  fi
  p="$(live_pid "$MUNGE_PID")"; [[ -n "$p" ]] && { [[ -n "$quiet" ]] || say "stopping munged ($p)"; kill_wait munged "$p"; }
  local orphans
  orphans="$(orphan_pids | tr '\n' ' ')"
  if [[ -n "${orphans// /}" ]]; then
    say "stopping leftover daemons of $DIR without pid files: $orphans"
    # shellcheck disable=SC2086
    kill_wait leftovers $orphans
  fi
  rm -f "$CTLD_PID" "$SLURMD_PID" "$MUNGE_PID" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
}

start_munged() {
  install -d -m 0755 "$DIR"
  install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
  local key=/etc/munge/munge.key
  # Use the system key only when munged will accept it: a regular file owned by munge, no group/other access.
  if ! [[ -f "$key" && "$(stat -c %U "$key")" == munge && "$(( 0$(stat -c %a "$key") & 077 ))" == 0 ]]; then
    key="$MUNGE_DIR/munge.key"
    if [[ ! -s "$key" ]]; then
      say "creating munge key $key"
      ( umask 077; head -c 1024 /dev/urandom > "$key" )
    fi
    chown munge:munge "$key"; chmod 0400 "$key"
  fi
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  [[ -f "$MUNGE_LOG" ]] && mv -f "$MUNGE_LOG" "$MUNGE_LOG.prev"
  # munged daemonizes; the parent returns once the socket is ready. --force: tolerate /tmp-style path checks.
  if command -v runuser >/dev/null; then
    runuser -u munge -- munged --force --socket="$MUNGE_SOCKET" --key-file="$key" --pid-file="$MUNGE_PID" \
      --log-file="$MUNGE_LOG" --seed-file="$MUNGE_DIR/munged.seed" ||
      { log_tails; die "munged failed to start"; }
  else
    su -s /bin/sh munge -c "munged --force --socket='$MUNGE_SOCKET' --key-file='$key' --pid-file='$MUNGE_PID' \
      --log-file='$MUNGE_LOG' --seed-file='$MUNGE_DIR/munged.seed'" || { log_tails; die "munged failed to start"; }
  fi
  local i
  for i in $(seq 1 50); do munge_ok && return 0; sleep 0.1; done
  log_tails; die "munged started but credentials do not round-trip on $MUNGE_SOCKET"
}

write_conf() {
  local ctld_port slurmd_port cpus gres="" gres_line="" first_job tag
  # Ports and job ids start at values drawn from this DIR and the clock, so clusters started side by side (two
  # test runs, a user's cluster) search from different places; free_port then skips ports in use.
  tag="$(printf '%s %s %s' "$DIR" "$$" "$(date +%s%N)" | cksum | cut -d' ' -f1)"
  ctld_port="$(free_port $((20000 + tag % 20000 * 2)))"
  slurmd_port="$(free_port $((ctld_port + 1)) "$ctld_port")"
  first_job=$((1000 + (tag / 20000) % 50000000))
  cpus="$(nproc)"
  if (( GPUS > 0 )); then
    local last=$((GPUS - 1))
    gres="Gres=gpu:$GPUS"
    gres_line="GresTypes=gpu"
    if (( GPUS == 1 )); then echo "NodeName=$HOST Name=gpu File=${GPU_DEV}0" > "$DIR/gres.conf"
    else echo "NodeName=$HOST Name=gpu File=${GPU_DEV}[0-$last]" > "$DIR/gres.conf"; fi
  else
    rm -f "$DIR/gres.conf"
  fi
  cat > "$CONF" <<EOF
# Generated by slurm/local_cluster.sh for a single-machine test cluster; regenerated on every fresh start.
ClusterName=moe-local-$((tag % 100000))
FirstJobId=$first_job
TmpFS=$DIR/tmp
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd.%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
MinJobAge=120
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=60
$gres_line
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus $gres State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

do_start() {
  local i
  for (( i = 0; i < GPUS; i++ )); do
    [[ -c $GPU_DEV$i || -b $GPU_DEV$i ]] ||
      die "--gpus $GPUS but $GPU_DEV$i is not a device file (Slurm would leave CUDA_VISIBLE_DEVICES empty)"
  done
  local b
  for b in munged munge unmunge slurmctld slurmd sinfo ss; do
    command -v "$b" >/dev/null || die "'$b' not found: install slurm-wlm and munge (launch/setup.sh)"
  done
  id munge >/dev/null 2>&1 || die "user 'munge' does not exist: install the munge package (launch/setup.sh)"
  if healthy; then
    if gpus_match; then
      say "already running in $DIR (node $HOST: $(node_state))"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    say "running with a different GPU count; restarting with --gpus $GPUS"
  fi
  # Anything left from a previous run (crash, unclean stop, half start) goes; state starts clean.
  do_stop quiet
  local t0=$SECONDS
  rm -rf "$DIR/state" "$DIR/spool"
  install -d -m 0755 "$DIR/state" "$DIR/spool" "$DIR/spool/slurmd.$HOST" "$DIR/log" "$DIR/run"
  rm -rf "$DIR/tmp"; install -d -m 1777 "$DIR/tmp"
  for b in "$CTLD_LOG" "$SLURMD_LOG"; do [[ -f "$b" ]] && mv -f "$b" "$b.prev"; done
  start_munged
  write_conf
  say "starting slurmctld and slurmd ($CONF)"
  slurmctld -f "$CONF" || { log_tails; die "slurmctld failed to start"; }
  slurmd -f "$CONF" || { log_tails; die "slurmd failed to start"; }
  local st=""
  while (( SECONDS - t0 < TIMEOUT )); do
    st="$(node_state)"
    case "$st" in
      idle*) break ;;
      down*|drain*|fail*)  # ReturnToService=2 normally clears this once slurmd registers; nudge once.
        SLURM_CONF="$CONF" scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    [[ -n "$(live_pid "$CTLD_PID")" ]] || { log_tails; die "slurmctld exited during start-up"; }
    [[ -n "$(live_pid "$SLURMD_PID")" ]] || { log_tails; die "slurmd exited during start-up"; }
    sleep 0.5
  done
  if [[ "$st" != idle* ]]; then
    log_tails
    die "node $HOST not idle after ${TIMEOUT}s (state '${st:-no answer from slurmctld}'); logs above, dir $DIR"
  fi
  say "cluster up in $((SECONDS - t0))s: node $HOST, $(nproc) CPUs, partition debug; logs in $DIR/log"
  echo "export SLURM_CONF=$CONF"
}

do_status() {
  local p
  for pair in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
    p="$(live_pid "${pair#*:}")"
    if [[ -n "$p" ]]; then printf '%-10s running (pid %s)\n' "${pair%%:*}" "$p"
    else printf '%-10s not running\n' "${pair%%:*}"; fi
  done
  if healthy; then
    echo "cluster    up (node $HOST: $(node_state))"
    SLURM_CONF="$CONF" sinfo
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  echo "cluster    down ($DIR)"
  return 3
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop; say "stopped ($DIR)" ;;
  status) do_status ;;
esac
