#!/usr/bin/env bash
# Owns the routing-overhead study on one machine: moe-bench over mpirun (ep 1..NP in one run), its cost-model report,
# and the plots (bench/moe_bench_plot.py). On a cluster: slurm/moe_bench_sweep.sbatch.
# Usage: bench/routing_overhead.sh [--build DIR] [--out DIR] [--np N] [-- extra moe-bench args]
# Sweep knobs (environment): TOKENS=256,1024,4096 HIDDEN=256,512 FFN=512,1024 EXPERTS=8,16 TOPK=1,2 CAPACITY=0,1.25
#   WARMUP=1 REPEATS=5. The defaults take about 5 minutes with --np 2 on an idle 2-core machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build" OUT="" NP=4
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) BUILD="$(cd "$2" && pwd)"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --np) NP="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "routing_overhead.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$BUILD/routing_overhead}"
[[ -x "$BUILD/moe-bench" ]] || { echo "routing_overhead.sh: $BUILD/moe-bench missing: launch/build.sh first" >&2; exit 2; }
EPS=1
for ((e = 2; e <= NP; e *= 2)); do ((NP % e == 0)) && EPS="$EPS,$e"; done
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mpirun --oversubscribe --allow-run-as-root -np "$NP" "$BUILD/moe-bench" --ep "$EPS" \
  --tokens "${TOKENS:-256,1024,4096}" --hidden "${HIDDEN:-256,512}" --ffn "${FFN:-512,1024}" --experts "${EXPERTS:-8,16}" \
  --topk "${TOPK:-1,2}" --capacity "${CAPACITY:-0,1.25}" --warmup "${WARMUP:-1}" --repeats "${REPEATS:-5}" \
  --out "$OUT" "$@"
PY="${MOE_PLOT_PYTHON:-$HOME/.cache/moe-train/venv/bin/python}"
if [[ -x "$PY" ]]; then
  "$PY" "$ROOT/bench/moe_bench_plot.py" "$OUT/moe_bench.csv" --model "$OUT/cost_model.json"
else
  echo "routing_overhead.sh: no venv python at $PY (launch/setup.sh); plot later with bench/moe_bench_plot.py $OUT/moe_bench.csv --model $OUT/cost_model.json" >&2
fi
