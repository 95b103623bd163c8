#!/usr/bin/env bash
# Owns the one-GPU training-throughput comparison: moe-train (train.device cuda, bf16) vs transformers + torch on the same GPU, tok/s and MFU.
#
# Usage: bench/gpu_train_throughput.sh [--moe-train BIN] [--config YAML] [--python PY] [--warmup W] [--steps S]
#                                      [--peak-tflops P] [--torch-precision bf16-params|bf16] [--torch-experts grouped_mm|eager]
# Both sides train the model of --config (default bench/gpu_mixtral_1gpu.yaml: Mixtral shape, 8 experts top-2,
# hidden 2048, 16 layers, 3.5 B parameters of which 1.07 B active; seq 2048 × micro-batch 4) for W warm-up + S timed
# steps (default 3 + 10) on the same random token windows; each side's number is the median tok/s of its timed steps.
#   ours:  moe-train with train.device cuda, train.precision bf16 (bf16 weights and activations, fp32 masters,
#          gradients and AdamW moments, DESIGN §8); tok/s from run.dir/metrics.jsonl. The run is stopped (SIGKILL)
#          once the timed steps are logged: its end-of-run checkpoint of 42 GB is not part of the benchmark.
#   torch: bench/torch_train.py --device cuda: transformers' MixtralForCausalLM with SDPA attention and grouped_mm
#          experts, --torch-precision bf16-params (default: parameters, gradients and AdamW moments in bf16, no fp32
#          master; transformers' grouped_mm is not autocast-enabled, so under autocast its experts would run fp32
#          GEMMs) or bf16 (autocast, fp32 weights).
# MFU = 6 · N_active · tok/s / peak, N_active = the active non-embedding parameters plus lm_head (attention's
# L-dependent FLOPs not counted), over --peak-tflops (the measured 8192³ cuBLAS bf16 GEMM of bench/gpu_grouped_gemm.cu,
# passed by tests/gpu/device_check.sh) and over the 989 TFLOP/s H100/H200 datasheet figure.
# Our binary runs with LD_LIBRARY_PATH=$MOE_LD_LIBRARY_PATH when that is set (the bundle's libraries; python keeps
# the machine's own). Prints ROW|name|verdict|figure lines for device_check.sh besides the human-readable ones.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/build-gpu/moe-train" CONFIG="$ROOT/bench/gpu_mixtral_1gpu.yaml" PY=python3
WARMUP=3 STEPS=10 PEAK="" TPREC=bf16-params TEXP=grouped_mm
DATASHEET=989
while [[ $# -gt 0 ]]; do
  case "$1" in
    --moe-train) BIN="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --peak-tflops) PEAK="$2"; shift 2 ;;
    --torch-precision) TPREC="$2"; shift 2 ;;
    --torch-experts) TEXP="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_train_throughput.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$BIN" ]] || { echo "gpu_train_throughput.sh: no moe-train at $BIN (--moe-train)" >&2; exit 2; }
command -v "$PY" >/dev/null || { echo "gpu_train_throughput.sh: no python '$PY' (--python)" >&2; exit 2; }
TOTAL=$((WARMUP + STEPS))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/moe-gpubench.XXXXXX")"
OURS_PID=""
cleanup() { [[ -n "$OURS_PID" ]] && kill -KILL "$OURS_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# Shape and active parameters from the YAML (the same formula as torch_train.py).
read -r B L V H I NL NH NKV E K ACTIVE < <("$PY" - "$CONFIG" <<'EOF'
import sys, yaml
y = yaml.safe_load(open(sys.argv[1])); m, t = y["model"], y["train"]
H, I, nl, NH, NKV = int(m["hidden_size"]), int(m["intermediate_size"]), int(m["num_layers"]), int(m["num_heads"]), int(m["num_kv_heads"])
E, K, V = int(m["num_experts"]), int(m["top_k"]), int(m["vocab_size"])
D = int(m.get("head_dim", H // NH))
active = nl * (H * NH * D + 2 * H * NKV * D + NH * D * H + H * E + K * 3 * H * I) + H * V
print(t["micro_batch"], t["seq_len"], V, H, I, nl, NH, NKV, E, K, active)
EOF
)
[[ -n "${ACTIVE:-}" ]] || { echo "gpu_train_throughput.sh: cannot read the model shape from $CONFIG" >&2; exit 2; }
TOKENS="$WORK/tokens.bin"
"$PY" -c "import numpy as np, sys; np.random.default_rng(0).integers(0, $V, size=($TOTAL + 1) * $B * $L + 1, dtype=np.uint32).tofile(sys.argv[1])" "$TOKENS" ||
  { echo "gpu_train_throughput.sh: cannot write the token file" >&2; exit 1; }
SHAPE="hidden $H, $NL layers, $E experts top-$K, expert width $I, vocab $V, seq $L × batch $B, $WARMUP warm-up + $STEPS timed steps"
echo "model: $SHAPE; active parameters $ACTIVE"

mfu() {  # mfu TOK_S → "MFU a% of the measured P TFLOP/s peak, b% of the 989 datasheet"
  awk -v t="$1" -v n="$ACTIVE" -v p="$PEAK" -v d="$DATASHEET" 'BEGIN{
    f = 6 * n * t / 1e12
    if (p != "") printf "%.1f model TFLOP/s = MFU %.1f%% of the measured %.0f TFLOP/s peak, %.1f%% of the %d datasheet", f, 100 * f / p, p, 100 * f / d, d
    else printf "%.1f model TFLOP/s = MFU %.1f%% of the %d TFLOP/s datasheet (no measured peak)", f, 100 * f / d, d }'
}
first_error() {  # a python traceback: its exception line; else the first line that reads like an error
  if grep -q '^Traceback' "$1"; then grep -E '^[A-Za-z_.]*(Error|Exception)' "$1" | tail -n 1 | cut -c1-200; return; fi
  grep -m1 -iE 'error|fail|exception|what\(\)|not implemented|not built|out of memory|refused' "$1" | cut -c1-200 || tail -n 1 "$1"
}

# ---- ours ----
ours_tok=""
dir="$WORK/run"
env ${MOE_LD_LIBRARY_PATH:+LD_LIBRARY_PATH="$MOE_LD_LIBRARY_PATH"} "$BIN" "$CONFIG" --set "train.steps=$((TOTAL + 1))" \
  --set "data.path=$TOKENS" --set "data.format=tokens" --set "run.dir=$dir" --set "log.every=1" \
  --set "checkpoint.on_signal=false" >"$WORK/ours.log" 2>&1 &
OURS_PID=$!
t0=$SECONDS
while kill -0 "$OURS_PID" 2>/dev/null; do
  lines=$(grep -c tok_per_s "$dir/metrics.jsonl" 2>/dev/null)
  ((${lines:-0} >= TOTAL)) && break
  sleep 1
done
if kill -0 "$OURS_PID" 2>/dev/null; then kill -KILL "$OURS_PID"; wait "$OURS_PID" 2>/dev/null; ours_rc=0
else wait "$OURS_PID"; ours_rc=$?; fi
OURS_PID=""
echo "--- moe-train (exit $ours_rc, $((SECONDS - t0)) s) ---"; tail -n 15 "$WORK/ours.log"
if [[ -f "$dir/metrics.jsonl" ]] && (($(grep -c tok_per_s "$dir/metrics.jsonl") >= TOTAL)); then
  read -r ours_tok ours_steps < <("$PY" - "$dir/metrics.jsonl" "$WARMUP" "$TOTAL" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][int(sys.argv[2]):int(sys.argv[3])]
print(statistics.median(r["tok_per_s"] for r in rows), ",".join(f"{r['tok_per_s']:.0f}" for r in rows))
EOF
  )
fi
if [[ -n "$ours_tok" ]]; then
  echo "moe-train: median $(printf %.0f "$ours_tok") tok/s (steps: $ours_steps); $(mfu "$ours_tok")"
  echo "ROW|train_tok_s.moe-train|pass|$(printf %.0f "$ours_tok") tok/s, $(mfu "$ours_tok"); bf16 (fp32 masters/moments); $SHAPE"
else
  echo "ROW|train_tok_s.moe-train|fail: $(first_error "$WORK/ours.log")|"
fi

# ---- torch ----
torch_tok=""
t0=$SECONDS
"$PY" "$ROOT/bench/torch_train.py" --device cuda --config "$CONFIG" --tokens "$TOKENS" --warmup "$WARMUP" \
  --steps "$STEPS" --attn sdpa --experts-impl "$TEXP" --precision "$TPREC" >"$WORK/torch.json" 2>"$WORK/torch.log"
trc=$?
echo "--- torch (exit $trc, $((SECONDS - t0)) s) ---"; tail -n 5 "$WORK/torch.log"
if ((trc == 0)); then
  read -r torch_tok tdesc < <("$PY" - "$WORK/torch.json" <<'EOF'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(j["tok_per_s"], f"transformers {j['transformers']}, torch {j['torch']}, attn {j['attn']}, experts {j['experts']}, {j['precision']};",
      "steps " + ",".join(f"{j['batch'] * j['seq'] / t:.0f}" for t in j["step_times_s"]))
EOF
  )
fi
if [[ -n "$torch_tok" ]]; then
  echo "torch: median $(printf %.0f "$torch_tok") tok/s ($tdesc); $(mfu "$torch_tok")"
  echo "ROW|train_tok_s.torch|pass|$(printf %.0f "$torch_tok") tok/s, $(mfu "$torch_tok"); ${tdesc%%;*}"
else
  echo "ROW|train_tok_s.torch|fail: $(first_error "$WORK/torch.log")|"
fi

if [[ -n "$ours_tok" && -n "$torch_tok" ]]; then
  r="$(awk -v a="$ours_tok" -v b="$torch_tok" 'BEGIN{printf "%.2f", a / b}')"
  echo "ratio moe-train / torch: ${r}x"
  echo "ROW|train_tok_s.ratio|pass|moe-train / torch = ${r}× (torch $TPREC, $TEXP experts, SDPA)"
else
  echo "ROW|train_tok_s.ratio|skip: a side failed|"
fi
[[ -n "$ours_tok" && -n "$torch_tok" ]]
