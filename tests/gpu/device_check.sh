#!/usr/bin/env bash
# Owns the one-command GPU check: GPU tests, the 10-step trajectory/determinism test and the GPU benchmarks, one markdown table of results.
#
# Usage: tests/gpu/device_check.sh            (from anywhere; writes $OUT/device_check.md, or ./device_check.md)
# Where the binaries come from, first match wins:
#   .gpubundle/ or .gpubundle.pack/gpubundle.tar.xz in the repo root (tests/gpu/make_bundle.sh made it on a build
#     machine: the sandbox GPU machine has no build dependencies);
#   MOE_GPU_BUILD=DIR: an existing CUDA build directory;
#   otherwise it configures and builds build-gpu-native/ for this machine's GPU (-DMOE_CUDA_ARCHS=native; a cluster
#     node with our dependencies and the CUDA toolkit).
# CUDA libraries (cuBLAS, cuBLASLt, cudart, NCCL) come from the CUDA toolkit's lib64 or from python3's pip nvidia-*
# wheels, whichever has them; the search result is a row of the table. LD_LIBRARY_PATH is set for our binaries
# only (python and nvidia-smi keep the machine's own libraries).
# Every step has a timeout and a failing step does not stop the others; the checks together stop after
# MOE_CHECK_BUDGET_S seconds (default 420; the rest are skipped), so one H200 run takes under 8 minutes.
# Without a GPU (none listed by nvidia-smi, or CUDA_VISIBLE_DEVICES empty or -1) every row is "skip: no GPU", the
# table is written and the exit status is 0. Exit status: 0 whatever the rows say (read the table); 2 on bad usage.
# Full output of every step: device_check.log beside the table.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case "${1:-}" in
  -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "device_check.sh: takes no arguments (see --help)" >&2; exit 2 ;;
esac
OUTDIR="${OUT:-$PWD}"
mkdir -p "$OUTDIR"
REPORT="$OUTDIR/device_check.md" LOG="$OUTDIR/device_check.log"
BUDGET="${MOE_CHECK_BUDGET_S:-420}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/moe-devcheck.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"
START_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"

# ---- the rows ----
ROW_NAME=() ROW_RESULT=() ROW_FIGURE=()
add_row() { ROW_NAME+=("$1"); ROW_RESULT+=("$2"); ROW_FIGURE+=("${3:-}"); }
md() { printf '%s' "$1" | tr '\n' ' ' | sed -e 's/|/\\|/g' -e 's/[[:space:]]*$//' | cut -c1-240; }

# The GPU tests: one executable per tests/gpu/test_*.{cu,cpp}; test_train_gpu gets one row per test (below).
GPU_TESTS=()
for src in "$ROOT"/tests/gpu/test_*.cu "$ROOT"/tests/gpu/test_*.cpp; do
  [[ -e "$src" ]] || continue
  n="$(basename "${src%.*}")"
  [[ "$n" == test_train_gpu ]] || GPU_TESTS+=("$n")
done
TRAIN_ROWS=(train_gpu.runs_on_gpu train_gpu.vs_cpu_bf16 train_gpu.vs_cpu_fp32 train_gpu.determinism)
TRAIN_TESTS=(TrainGpu.RunsOnTheGpu TrainGpu.TrajectoryMatchesCpuBf16 TrainGpu.TrajectoryCloseToCpuFp32 TrainGpu.DeterministicRunToRun)
BENCH_ROWS=(cublas_bf16_peak grouped_gemm_vs_dense train_tok_s.moe-train train_tok_s.torch train_tok_s.ratio
            moe_routing_fraction moe_bench_tiny nccl_dispatch_a2a)

write_report() {
  {
    echo "# GPU device check"
    echo
    echo "- GPU: ${GPU_DESC:-none}"
    echo "- date: $START_DATE; binaries: ${BIN_DESC:-none}; total ${SECONDS} s"
    echo
    echo "| check | result | figure |"
    echo "|---|---|---|"
    for i in "${!ROW_NAME[@]}"; do
      echo "| $(md "${ROW_NAME[$i]}") | $(md "${ROW_RESULT[$i]}") | $(md "${ROW_FIGURE[$i]}") |"
    done
  } >"$REPORT"
  cat "$REPORT"
  echo "(table: $REPORT; full output: $LOG)"
}

# ---- is there a GPU? ----
gpu_count() {
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" && ( -z "$CUDA_VISIBLE_DEVICES" || "$CUDA_VISIBLE_DEVICES" == "-1" ) ]]; then
    echo 0; return
  fi
  command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
  local n
  n="$(timeout 30 nvidia-smi -L 2>/dev/null | grep -c '^GPU ')" || n=0
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    local v
    v="$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)"
    ((v < n)) && n=$v
  fi
  echo "$n"
}
NGPU="$(gpu_count)"
if ((NGPU == 0)); then
  why="no GPU"
  if ! command -v nvidia-smi >/dev/null 2>&1; then why="no GPU (no nvidia-smi)"
  elif [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then why="no GPU (CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES}')"
  else why="no GPU (nvidia-smi lists none)"; fi
  for n in nvidia-smi binaries cuda_libraries "${GPU_TESTS[@]}" "${TRAIN_ROWS[@]}" train_gpu_bf16.cudnn_off "${BENCH_ROWS[@]}"; do
    add_row "$n" "skip: $why"
  done
  echo "device_check.sh: $why: every check skipped" >>"$LOG"
  write_report
  exit 0
fi

# ---- step runner: timeout per step, one deadline for all ----
DEADLINE=$((SECONDS + BUDGET))
STEP_RC=0 STEP_OUT="" STEP_T=0
# run_step NAME TIMEOUT CMD...: runs CMD (output into the log and $STEP_OUT), sets STEP_RC (124: timed out;
# 200: not started, the budget is spent).
run_step() {
  local name="$1" t="$2"; shift 2
  STEP_OUT="$WORK/$(tr -c 'A-Za-z0-9._-' _ <<<"$name").out"
  : >"$STEP_OUT"
  local left=$((DEADLINE - SECONDS))
  if ((left < 20)); then STEP_RC=200; echo "=== $name: not started, the ${BUDGET} s budget is spent" >>"$LOG"; return; fi
  ((t > left - 10)) && t=$((left - 10))
  echo "=== $name (timeout ${t} s): $*" >>"$LOG"
  local t0=$SECONDS
  timeout -k 10 "$t" "$@" >"$STEP_OUT" 2>&1
  STEP_RC=$?
  cat "$STEP_OUT" >>"$LOG"
  echo "=== $name: exit $STEP_RC after $((SECONDS - t0)) s" >>"$LOG"
  STEP_T=$t
}
# The first line of a step's output that says what went wrong (a gtest "Failure" line with the line after it).
first_error() {
  local f="$1" line
  line="$(grep -m1 -n -iE 'error|fail|mismatch|exception|abort|terminate|not found|refused|cannot|not built|not implemented|what\(\)' "$f")"
  if [[ -z "$line" ]]; then tail -n 1 "$f"; return; fi
  local no="${line%%:*}" text="${line#*:}"
  if [[ "$text" == *Failure ]]; then text="$text $(sed -n "$((no + 1))p" "$f")"; fi
  printf '%s' "$text"
}
# verdict NAME [FIGURE]: the row of the last run_step by its exit status.
verdict() {
  local name="$1" fig="${2:-}"
  case "$STEP_RC" in
    0) add_row "$name" pass "$fig" ;;
    77) add_row "$name" "skip: $(tail -n 1 "$STEP_OUT")" "$fig" ;;
    124|137) add_row "$name" "fail: timed out after ${STEP_T} s" "$fig" ;;
    200) add_row "$name" "skip: the ${BUDGET} s budget was spent" ;;
    *) add_row "$name" "fail: exit $STEP_RC: $(first_error "$STEP_OUT")" "$fig" ;;
  esac
}
# Rows a benchmark printed itself, one per line: ROW|name|pass or fail: why or skip: why|figure.
rows_from_output() {
  local found=0 _ n r f
  while IFS='|' read -r _ n r f; do add_row "$n" "$r" "$f"; found=1; done < <(grep '^ROW|' "$STEP_OUT")
  return $((1 - found))
}
# Rows named in $@ that a step should have printed but did not (it failed first): its verdict for each.
missing_rows() {
  local n
  for n in "$@"; do
    printf '%s\n' "${ROW_NAME[@]}" | grep -qxF "$n" && continue
    if ((STEP_RC == 0)); then add_row "$n" "fail: the step printed no result for this row"
    else verdict "$n"; fi
  done
}

# ---- nvidia-smi ----
run_step nvidia-smi 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
GPU_DESC="$(head -1 "$STEP_OUT" | sed 's/, */, /g')"
[[ -n "$GPU_DESC" ]] || GPU_DESC="unknown (nvidia-smi failed)"
((NGPU > 1)) && GPU_DESC="$NGPU × $GPU_DESC"
verdict nvidia-smi "$GPU_DESC"
timeout 30 nvidia-smi >>"$LOG" 2>&1

# ---- (a) the binaries ----
BIN="" LIBDIR="" BUILD_DIR=""
if [[ ! -d "$ROOT/.gpubundle/bin" && -f "$ROOT/.gpubundle.pack/gpubundle.tar.xz" ]]; then
  mkdir -p "$ROOT/.gpubundle"
  if ! (command -v xz >/dev/null && tar -C "$ROOT/.gpubundle" -xJf "$ROOT/.gpubundle.pack/gpubundle.tar.xz") 2>>"$LOG"; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$ROOT/.gpubundle.pack/gpubundle.tar.xz" "$ROOT/.gpubundle" 2>>"$LOG"
  fi
fi
if [[ -d "$ROOT/.gpubundle/bin" ]]; then
  BIN="$ROOT/.gpubundle/bin" LIBDIR="$ROOT/.gpubundle/lib"
  BIN_DESC="bundle ($(grep -m1 '^commit' "$ROOT/.gpubundle/MANIFEST" 2>/dev/null || echo 'no MANIFEST'))"
  add_row binaries pass "$(ls "$BIN" | wc -l) executables from .gpubundle; $(sed -n 2,3p "$ROOT/.gpubundle/MANIFEST" 2>/dev/null | tr '\n' ';')"
else
  if [[ -n "${MOE_GPU_BUILD:-}" ]]; then
    BUILD_DIR="$MOE_GPU_BUILD"
    BIN_DESC="build dir $BUILD_DIR"
    add_row binaries pass "existing build $BUILD_DIR"
  else
    BUILD_DIR="$ROOT/build-gpu-native"
    BIN_DESC="built here ($BUILD_DIR, archs native, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    targets=(moe-train test_train_gpu "${GPU_TESTS[@]}")
    t0=$SECONDS
    {
      echo "=== build: configure + build $BUILD_DIR"
      cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA_ARCHS=native &&
        mapfile -t benches < <(cmake --build "$BUILD_DIR" --target help | grep -oE 'gpu-[a-z0-9-]+' | sort -u) &&
        timeout 3600 cmake --build "$BUILD_DIR" -j"$(nproc)" --target "${targets[@]}" "${benches[@]}"
    } >"$WORK/build.out" 2>&1
    rc=$?
    cat "$WORK/build.out" >>"$LOG"
    if ((rc == 0)); then add_row binaries pass "built in $((SECONDS - t0)) s (not counted in the budget)"
    else add_row binaries "fail: build: $(first_error "$WORK/build.out")"; fi
    DEADLINE=$((SECONDS + BUDGET))
  fi
fi
# find_bin NAME: the path of executable NAME, or empty.
find_bin() {
  if [[ -n "$BIN" ]]; then [[ -x "$BIN/$1" ]] && echo "$BIN/$1"; return; fi
  local d
  for d in "$BUILD_DIR" "$BUILD_DIR/tests" "$BUILD_DIR/bench"; do
    [[ -x "$d/$1" && -f "$d/$1" ]] && { echo "$d/$1"; return; }
  done
}

# ---- (b) the CUDA libraries ----
OUR_LD="$LIBDIR"
cands=()
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  [[ -n "$d" ]] && cands+=("$d/lib64" "$d/lib" "$d/targets/x86_64-linux/lib")
done
cands+=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu)
while read -r sp; do
  [[ -d "$sp/nvidia" ]] || continue
  while read -r d; do cands+=("$d"); done < <(find "$sp/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | sort)
done < <(python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
declare -A lib_from=()
unresolved=()
all_bins=()
for n in moe-train test_train_gpu "${GPU_TESTS[@]}" gpu-grouped-gemm gpu-moe-layer gpu-alltoall; do
  b="$(find_bin "$n")"
  [[ -n "$b" ]] && all_bins+=("$b")
done
for round in 1 2; do  # a library found in round 1 may need another (cuBLAS → cuBLASLt)
  missing=()
  for b in "${all_bins[@]}"; do
    while read -r name; do missing+=("$name"); done < <(LD_LIBRARY_PATH="$OUR_LD" ldd "$b" 2>/dev/null | awk '/not found/{print $1}')
  done
  ((${#missing[@]})) || break
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  unresolved=()
  for name in "${missing[@]}"; do
    found=""
    for d in "${cands[@]}"; do [[ -e "$d/$name" ]] && { found="$d"; break; }; done
    if [[ -n "$found" ]]; then
      lib_from[$name]="$found"
      case ":$OUR_LD:" in *":$found:"*) ;; *) OUR_LD="${OUR_LD:+$OUR_LD:}$found" ;; esac
    else
      unresolved+=("$name")
    fi
  done
done
export MOE_LD_LIBRARY_PATH="$OUR_LD"
# cuDNN (fused attention) is dlopen'ed, not linked, so ldd does not ask for it: point moe-train at the first
# libcudnn.so.9 of the search (toolkit or pip wheel) unless MOE_CUDNN_LIBRARY names one already.
if [[ -z "${MOE_CUDNN_LIBRARY:-}" ]]; then
  for d in "${cands[@]}"; do [[ -e "$d/libcudnn.so.9" ]] && { export MOE_CUDNN_LIBRARY="$d/libcudnn.so.9"; break; }; done
fi
echo "=== MOE_CUDNN_LIBRARY=${MOE_CUDNN_LIBRARY:-unset: the default loader search}" >>"$LOG"
echo "=== LD_LIBRARY_PATH for our binaries: $OUR_LD" >>"$LOG"
libs_fig=""
for name in "${!lib_from[@]}"; do libs_fig+="${name%%.so*} ← ${lib_from[$name]}; "; done
if ((${#all_bins[@]} == 0)); then add_row cuda_libraries "skip: no binaries"
elif ((${#unresolved[@]})); then add_row cuda_libraries "fail: not found: ${unresolved[*]}" "$libs_fig"
else add_row cuda_libraries pass "${libs_fig:-every library found on the default loader paths}"; fi

# ---- (c) the GPU tests ----
for n in "${GPU_TESTS[@]}"; do
  b="$(find_bin "$n")"
  if [[ -z "$b" ]]; then add_row "$n" "fail: executable not built"; continue; fi
  run_step "$n" 120 env LD_LIBRARY_PATH="$OUR_LD" "$b"
  fig="$(grep -oE '\[  PASSED  \] [0-9]+ tests?' "$STEP_OUT" | tail -1)"
  verdict "$n" "$fig"
done
b="$(find_bin test_train_gpu)"
if [[ -z "$b" ]]; then
  for n in "${TRAIN_ROWS[@]}"; do add_row "$n" "fail: test_train_gpu not built"; done
else
  run_step test_train_gpu 240 env LD_LIBRARY_PATH="$OUR_LD" "$b"
  for i in "${!TRAIN_ROWS[@]}"; do
    t="${TRAIN_TESTS[$i]}"
    fig=""
    case "$t" in
      *CpuBf16) fig="$(grep -m1 'gpu bf16 vs cpu bf16\] worst' "$STEP_OUT" | sed 's/^.*error: //')" ;;
      *CpuFp32) fig="$(grep -m1 'gpu bf16 vs cpu fp32\] worst' "$STEP_OUT" | sed 's/^.*error: //')" ;;
    esac
    if grep -q "^\[       OK \] $t " "$STEP_OUT"; then add_row "${TRAIN_ROWS[$i]}" pass "$fig"
    elif grep -q "^\[  FAILED  \] $t " "$STEP_OUT"; then
      # The first failure message inside this test's block.
      msg="$(awk -v t="$t" '$0 ~ "^\\[ RUN      \\] " t "$" {on=1; next} on && /Failure$/ {getline; print; exit} on && /^\[/ {exit}' "$STEP_OUT")"
      add_row "${TRAIN_ROWS[$i]}" "fail: ${msg:-see log}" "$fig"
    else verdict "${TRAIN_ROWS[$i]}" "$fig"; fi
  done
fi

# The same bf16 trajectory with attention on the hand-written kernels (MOE_CUDNN_ATTENTION=off): tells cuDNN's
# bf16 rounding of P and dS in attention backward apart from the rest when the row above misses.
if [[ -n "$b" ]]; then
  run_step train_gpu_bf16.cudnn_off 150 env LD_LIBRARY_PATH="$OUR_LD" MOE_CUDNN_ATTENTION=off "$b" --gtest_filter='*CpuBf16'
  verdict train_gpu_bf16.cudnn_off "$(grep -m1 'gpu bf16 vs cpu bf16\] worst' "$STEP_OUT" | sed 's/^.*error: //')"
fi

# ---- (c) the benchmarks ----
PEAK=""
b="$(find_bin gpu-grouped-gemm)"
if [[ -z "$b" ]]; then
  add_row cublas_bf16_peak "fail: gpu-grouped-gemm not built"; add_row grouped_gemm_vs_dense "fail: gpu-grouped-gemm not built"
else
  run_step gpu-grouped-gemm 120 env LD_LIBRARY_PATH="$OUR_LD" "$b"
  rows_from_output
  missing_rows cublas_bf16_peak grouped_gemm_vs_dense
  PEAK="$(grep -m1 '^PEAK_TFLOPS=' "$STEP_OUT" | cut -d= -f2)"
fi
b="$(find_bin gpu-moe-layer)"
if [[ -z "$b" ]]; then add_row moe_routing_fraction "fail: gpu-moe-layer not built"
else
  run_step gpu-moe-layer 90 env LD_LIBRARY_PATH="$OUR_LD" "$b"
  rows_from_output
  missing_rows moe_routing_fraction
fi
# moe-bench on the real MoE layer with CUDA-event phase timers: the CI sweep on one GPU (ep 1) and the cost model.
b="$(find_bin moe-bench)"
if [[ -z "$b" ]]; then add_row moe_bench_tiny "fail: moe-bench not built"
else
  run_step moe-bench 120 env LD_LIBRARY_PATH="$OUR_LD" "$b" --tiny --device cuda --out "$WORK/moe_bench"
  verdict moe_bench_tiny "$(grep -m1 'held-out prediction error' "$STEP_OUT" | cut -c1-200)"
fi
mt="$(find_bin moe-train)"
if [[ -z "$mt" ]]; then
  for n in train_tok_s.moe-train train_tok_s.torch train_tok_s.ratio; do add_row "$n" "fail: moe-train not built"; done
else
  run_step gpu_train_throughput 240 bash "$ROOT/bench/gpu_train_throughput.sh" --moe-train "$mt" ${PEAK:+--peak-tflops "$PEAK"}
  rows_from_output
  missing_rows train_tok_s.moe-train train_tok_s.torch train_tok_s.ratio
fi
# The EP exchange on NCCL: one rank per GPU under mpirun; our libraries reach the ranks only (-x / -genv), so that
# mpirun itself keeps the machine's own.
b="$(find_bin gpu-alltoall)"
if ((NGPU < 2)); then add_row nccl_dispatch_a2a "skip: needs ≥ 2 GPUs (this machine has $NGPU)"
elif ! command -v mpirun >/dev/null 2>&1; then add_row nccl_dispatch_a2a "skip: needs ≥ 2 GPUs under mpirun (this machine has $NGPU GPUs but no mpirun)"
elif [[ -z "$b" ]]; then add_row nccl_dispatch_a2a "fail: gpu-alltoall not built"
else
  if mpirun --version 2>&1 | grep -qi 'open mpi\|open-mpi\|openrte'; then
    mpi_env=(--oversubscribe --bind-to none -x MOE_NCCL_TIMEOUT_S=60 ${OUR_LD:+-x "LD_LIBRARY_PATH=$OUR_LD"})
  else
    mpi_env=(-genv MOE_NCCL_TIMEOUT_S 60 ${OUR_LD:+-genv LD_LIBRARY_PATH "$OUR_LD"})
  fi
  run_step gpu-alltoall 150 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    mpirun -np "$NGPU" "${mpi_env[@]}" "$b"
  rows_from_output
  missing_rows nccl_dispatch_a2a
fi

write_report
exit 0
