#!/usr/bin/env bash
# Owns the training-throughput comparison: moe-train vs transformers+torch eager on the same model, batch, CPU and threads.
#
# Usage: bench/train_throughput.sh [--threads N] [--warmup W] [--steps S] [--batch B] [--seq L] [--rounds R]
#                                  [--config YAML] [--build DIR] [--python PY] [--torch-attn eager|sdpa]
#                                  [--torch-experts eager|grouped_mm|batched_mm] [--our-env KEY=VAL]...
#                                  [--quiet-wait SECONDS] [--precision fp32|bf16]
# Both sides train the model of --config (default bench/bench_small.yaml) for W warm-up + S timed steps on the
# same random uint32 token windows; each side's number is the median tokens/s of its S timed steps
# (forward + backward + clip + AdamW; ours from run.dir/metrics.jsonl). With --rounds R > 1 the two sides
# alternate R times and the best median of each side is reported (less sensitive to other load on the machine).
# Before each run the script waits up to --quiet-wait s (default 60) for the CPUs to be idle.
# --precision bf16: ours runs train.precision bf16 (docs/DESIGN.md §8), torch runs its forward and loss under
# torch.autocast("cpu", bfloat16) (fp32 master weights, fp32 AdamW), its usual bf16 CPU recipe.
# Both numbers are also given as model FLOP/s (6 · active non-embedding params + causal attention, per token)
# and as a share of this machine's sgemm peak measured by bench/sgemm_peak.cpp in the same run.
# Our run gets OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = N (plus any --our-env); torch gets set_num_threads(N).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS=2 WARMUP=2 STEPS=5 BATCH="" SEQ="" ROUNDS=1 QUIET_WAIT=60 PRECISION=fp32
CONFIG="$ROOT/bench/bench_small.yaml"
BUILD="$ROOT/build-bench"
PY="${MOE_ORACLE_PY:-$HOME/.cache/moe-train/venv/bin/python}"
TORCH_ATTN=eager TORCH_EXPERTS=eager
OUR_ENV=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --batch) BATCH="$2"; shift 2 ;;
    --seq) SEQ="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
    --config) CONFIG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --torch-attn) TORCH_ATTN="$2"; shift 2 ;;
    --torch-experts) TORCH_EXPERTS="$2"; shift 2 ;;
    --our-env) OUR_ENV+=("$2"); shift 2 ;;
    --precision) PRECISION="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "train_throughput.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$PRECISION" == fp32 || "$PRECISION" == bf16 ]] || { echo "train_throughput.sh: --precision fp32|bf16, not '$PRECISION'" >&2; exit 2; }
BIN="$BUILD/moe-train"
PEAK_BIN="$BUILD/bench/sgemm-peak"
[[ -x "$PY" ]] || { echo "train_throughput.sh: no python at $PY (launch/test.sh creates the oracle venv; or --python)" >&2; exit 2; }
if [[ ! -x "$BIN" ]]; then
  echo "building $BIN ..." >&2
  cmake -S "$ROOT" -B "$BUILD" -DMOE_NO_CUDA=ON >/dev/null
  cmake --build "$BUILD" -j"$THREADS" --target moe-train >/dev/null
fi
if [[ ! -x "$PEAK_BIN" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DMOE_NO_CUDA=ON >/dev/null
  cmake --build "$BUILD" -j"$THREADS" --target sgemm-peak >/dev/null
fi

# Shape from the YAML (after --batch/--seq), for the token file and the summary line.
read -r B L H NLAY NE TOPK NH NKV < <("$PY" - "$CONFIG" "${BATCH:-0}" "${SEQ:-0}" <<'EOF'
import sys, yaml
y = yaml.safe_load(open(sys.argv[1])); m, t = y["model"], y["train"]
b = int(sys.argv[2]) or int(t["micro_batch"]); l = int(sys.argv[3]) or int(t["seq_len"])
print(b, l, m["hidden_size"], m["num_layers"], m["num_experts"], m["top_k"], m["num_heads"], m["num_kv_heads"])
EOF
)
[[ -n "${NKV:-}" ]] || { echo "train_throughput.sh: cannot read the model shape from $CONFIG" >&2; exit 2; }
TOTAL=$((WARMUP + STEPS))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/moe-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TOKENS="$WORK/tokens.bin"
# Random byte-level ids, enough distinct windows for every step: (TOTAL·B) windows of L+1 tokens.
"$PY" -c "import numpy as np, sys; np.random.default_rng(0).integers(0, 256, size=$TOTAL*$B*$L+1, dtype=np.uint32).tofile(sys.argv[1])" "$TOKENS"

ours_once() {
  local dir="$WORK/run"
  rm -rf "$dir"
  local sets=(--set "train.steps=$TOTAL" --set "data.path=$TOKENS" --set "data.format=tokens" --set "run.dir=$dir"
              --set "train.micro_batch=$B" --set "train.seq_len=$L" --set "log.every=$TOTAL"
              --set "train.precision=$PRECISION")
  env OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" "${OUR_ENV[@]}" \
    "$BIN" "$CONFIG" "${sets[@]}" >"$WORK/ours.log" 2>&1 || { cat "$WORK/ours.log" >&2; exit 1; }
  "$PY" - "$dir/metrics.jsonl" "$WARMUP" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][int(sys.argv[2]):]
print(statistics.median(r["tok_per_s"] for r in rows), " ".join(f"{r['tok_per_s']:.0f}" for r in rows))
EOF
}

torch_once() {
  env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" "$PY" "$ROOT/bench/torch_train.py" --config "$CONFIG" \
    --tokens "$TOKENS" --threads "$THREADS" --warmup "$WARMUP" --steps "$STEPS" --batch "$B" --seq "$L" \
    --attn "$TORCH_ATTN" --experts-impl "$TORCH_EXPERTS" --precision "$PRECISION" >"$WORK/torch.json" 2>"$WORK/torch.log" \
    || { cat "$WORK/torch.log" >&2; exit 1; }
  "$PY" - "$WORK/torch.json" <<'EOF'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(j["transformers"], j["attn"], j["experts"], j["flops_per_token"], j["tok_per_s"],
      " ".join(f"{j['batch'] * j['seq'] / t:.0f}" for t in j["step_times_s"]))
EOF
}

# CPUs busy over the last second (all processes); before each run we wait (up to QUIET_WAIT s) until the
# machine is idle, because the two sides run one after the other and would otherwise see different load.
busy_cpus() {
  local a b c d e f g h t1 i1
  read -r _ a b c d e f g h _ </proc/stat; t1=$((a + b + c + d + e + f + g + h)); i1=$((d + e))
  sleep 1
  read -r _ a b c d e f g h _ </proc/stat
  awk -v n="$(nproc)" -v dt=$((a + b + c + d + e + f + g + h - t1)) -v di=$((d + e - i1)) 'BEGIN{printf "%.2f", n * (1 - di / dt)}'
}
wait_quiet() {
  local waited=0 b
  while b="$(busy_cpus)"; awk -v b="$b" 'BEGIN{exit !(b > 0.25)}'; do
    if ((waited >= QUIET_WAIT)); then
      echo "warning: $b CPUs busy with other work before the $1 run; its number may be low" >&2
      NOISY=1
      return
    fi
    waited=$((waited + 1))
  done
}
NOISY=0

best_ours=0 best_torch=0 tver="" tattn="" texp=""
for ((r = 1; r <= ROUNDS; ++r)); do
  o="" t=""
  wait_quiet moe-train
  read -r o osteps < <(ours_once) || true
  [[ -n "${o:-}" ]] || { echo "train_throughput.sh: the moe-train run failed (log above)" >&2; exit 1; }
  wait_quiet torch
  read -r tver tattn texp fpt t tsteps < <(torch_once) || true
  [[ -n "${t:-}" ]] || { echo "train_throughput.sh: the torch run failed (log above)" >&2; exit 1; }
  echo "round $r: moe-train steps tok/s [$osteps] median $(printf %.0f "$o") | torch steps tok/s [$tsteps] median $(printf %.0f "$t")" >&2
  best_ours="$(awk -v a="$best_ours" -v b="$o" 'BEGIN{print (b > a ? b : a)}')"
  best_torch="$(awk -v a="$best_torch" -v b="$t" 'BEGIN{print (b > a ? b : a)}')"
done

wait_quiet sgemm-peak
peak="$(env OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" "$PEAK_BIN" 2048 10 | "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["gflops"])')"

impl="eager"
[[ "$tattn" != eager || "$texp" != eager ]] && impl="eager mode, attn $tattn, experts $texp"
[[ "$PRECISION" == bf16 ]] && impl="$impl, autocast bf16"
ratio="$(awk -v a="$best_ours" -v b="$best_torch" 'BEGIN{printf "%.2f", a / b}')"
extra=""
[[ ${#OUR_ENV[@]} -gt 0 ]] && extra=", ours with ${OUR_ENV[*]}"
printf 'moe-train %s: %.0f tok/s | torch %s (transformers %s): %.0f tok/s | ratio %sx (threads=%s, hidden %s, %s layers, %s experts top-%s, %s/%s heads, seq %s, batch %s, %s warm-up + %s timed steps%s)\n' \
  "$PRECISION" "$best_ours" "$impl" "$tver" "$best_torch" "$ratio" "$THREADS" "$H" "$NLAY" "$NE" "$TOPK" "$NH" "$NKV" "$L" "$B" \
  "$WARMUP" "$STEPS" "$extra"
awk -v o="$best_ours" -v t="$best_torch" -v f="$fpt" -v p="$peak" 'BEGIN{
  printf "model FLOP/s (%.3g FLOP/token): moe-train %.2f GFLOP/s = %.1f%% of sgemm peak | torch %.2f GFLOP/s = %.1f%% | sgemm peak %.1f GFLOP/s (OpenBLAS, same threads)\n",
    f, o * f / 1e9, 100 * o * f / 1e9 / p, t * f / 1e9, 100 * t * f / 1e9 / p, p }'
((NOISY == 0)) || echo "note: some runs started while other processes used the CPUs (see warnings above)" >&2
