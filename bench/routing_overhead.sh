#!/usr/bin/env bash
# Owns the routing-overhead sweep: moe-bench under mpirun for ep ∈ {1,2,4}, one CSV, and a summary of where the MoE forward time goes plus the dispatch all-to-all ratio ours/plain.
# Usage: bench/routing_overhead.sh [--build DIR] [--out DIR] [-- extra moe-bench args]
# Sweep knobs (environment): EPS="1 2 4" TOKENS=256,1024,4096 TOPK=1,2 CAPACITY=0,1.0,1.25 HIDDEN=256 FFN=512
#   EXPERTS=8 ITERS=6 WARMUP=1 A2A_REPS=5. The defaults take about a minute on an idle 2-core machine (ep=4 is oversubscribed).
# DIR defaults to build and must hold libmoe_core.a. If DIR's CMake project has the moe-bench target
# (bench/moe_bench.cmake included) it is built there; otherwise moe_bench.cpp is compiled against DIR's library.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build" OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) BUILD="$(cd "$2" && pwd)"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "routing_overhead.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
EPS="${EPS:-1 2 4}" TOKENS="${TOKENS:-256,1024,4096}" TOPK="${TOPK:-1,2}" CAPACITY="${CAPACITY:-0,1.0,1.25}"
HIDDEN="${HIDDEN:-256}" FFN="${FFN:-512}" EXPERTS="${EXPERTS:-8}"
ITERS="${ITERS:-6}" WARMUP="${WARMUP:-1}" A2A_REPS="${A2A_REPS:-5}"
OUT="${OUT:-$BUILD/routing_overhead}"
mkdir -p "$OUT"
[[ -f "$BUILD/libmoe_core.a" ]] || {
  echo "routing_overhead.sh: $BUILD/libmoe_core.a missing; build first: cmake -B $BUILD -DMOE_NO_CUDA=ON && cmake --build $BUILD -j2" >&2
  exit 2
}

# ---- the binary: the CMake target when the project has it, else a direct compile against libmoe_core.a ----
if cmake --build "$BUILD" --target help 2>/dev/null | grep -qw 'moe-bench'; then
  cmake --build "$BUILD" --target moe-bench >/dev/null
  BIN="$BUILD/moe-bench"
else
  BIN="$BUILD/moe-bench-standalone"
  SRC="$ROOT/src/apps/moe_bench.cpp"
  if [[ ! -x "$BIN" || "$SRC" -nt "$BIN" || "$BUILD/libmoe_core.a" -nt "$BIN" ]]; then
    flags="-std=c++17 -O3 -march=x86-64-v2 -fopenmp -I$ROOT/src -I$ROOT"
    if [[ -f "$BUILD/CMakeFiles/moe-train.dir/link.txt" ]]; then
      # The link line of moe-train, minus its object file and output name (the same libraries moe-bench needs).
      libs="$(sed -e 's|^.* -o moe-train ||' "$BUILD/CMakeFiles/moe-train.dir/link.txt")"
      (cd "$BUILD" && eval "c++ $flags \"$SRC\" -o \"$BIN\" $libs")
    else
      # shellcheck disable=SC2046
      c++ $flags "$SRC" -o "$BIN" "$BUILD/libmoe_core.a" $(pkg-config --libs openblas) -lyaml-cpp -lspdlog -lfmt \
        $(mpicc --showme:link)
    fi
  fi
fi

# ---- the sweep ----
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
CSV="$OUT/moe_bench.csv" LOG="$OUT/moe_bench.log"
rm -f "$CSV"
: >"$LOG"
load_before="$(cut -d' ' -f1 /proc/loadavg)"
start=$SECONDS
for ep in $EPS; do
  if (( EXPERTS % ep != 0 )); then echo "skip ep=$ep: $EXPERTS experts do not split over $ep ranks" | tee -a "$LOG"; continue; fi
  mpirun -np "$ep" --oversubscribe --bind-to none "$BIN" --tokens "$TOKENS" --hidden "$HIDDEN" --ffn "$FFN" \
    --experts "$EXPERTS" --topk "$TOPK" --capacity "$CAPACITY" --iters "$ITERS" --warmup "$WARMUP" \
    --a2a-reps "$A2A_REPS" --csv "$CSV" --csv-append "$@" 2>&1 | tee -a "$LOG"
  echo | tee -a "$LOG"
done
elapsed=$((SECONDS - start))
load_after="$(cut -d' ' -f1 /proc/loadavg)"

# ---- summary from the CSV (columns looked up by name) ----
awk -F, -v cores="$(getconf _NPROCESSORS_ONLN)" -v secs="$elapsed" -v lb="$load_before" -v la="$load_after" '
NR == 1 { for (i = 1; i <= NF; ++i) c[$i] = i; next }
{
  n++
  route = $c["route_ms"] + $c["plan_ms"] + $c["permute_ms"] + $c["counts_ms"] + $c["combine_ms"]
  comm = $c["a2a_dispatch_ms"] + $c["a2a_return_ms"]
  tot = $c["total_ms"]; r = $c["ratio"]; rb = $c["ratio_best"]; rd = $c["ratio_direct"]; rdb = $c["ratio_direct_best"]
  if (n == 1) {
    printf "routing overhead summary (ms: median over iters, max over ranks; T = tokens per rank; %d cores, ep>%d oversubscribed)\n", cores, cores
    printf "route%% = route+plan+permute+counts+combine, a2a%% = dispatch+return exchanges (incl. their block permutation), of the summed phases\n"
    printf "%3s %6s %2s %5s %6s | %9s %7s %7s %7s | %8s | %6s %6s %6s %6s | %6s %6s\n", "ep", "T", "k", "cf", "drop%", "total", "route%", "a2a%", "expert%", "layer", "ours", "plain", "ratio", "best", "direct", "dbest"
  }
  drop = $c["pairs"] > 0 ? 100 * ($c["pairs"] - $c["kept"]) / $c["pairs"] : 0
  printf "%3d %6d %2d %5.2f %6.1f | %9.3f %7.1f %7.1f %7.1f | %8.3f | %6.2f %6.2f %6.3f %6.3f | %6.3f %6.3f%s\n", $c["ep"], $c["tokens"], $c["topk"], $c["capacity_factor"], drop, tot, 100 * route / tot, 100 * comm / tot, 100 * $c["experts_ms"] / tot, $c["layer_ms"], $c["ours_gbps"], $c["plain_gbps"], r, rb, rd, rdb, r < 0.85 ? "  <0.85" : ""
  if (!($c["ep"] in ep_n)) order[++n_ep] = $c["ep"]
  ratios[n] = r; ep_n[$c["ep"]]++; ep_sum[$c["ep"]] += r; ep_sumb[$c["ep"]] += rb; ep_sumd[$c["ep"]] += rd; ep_sumdb[$c["ep"]] += rdb
  if (!($c["ep"] in ep_min) || r < ep_min[$c["ep"]]) ep_min[$c["ep"]] = r
  below += r < 0.85; below_b += rb < 0.85; if ($c["layer_maxdiff"] + 0 > 0) bad++
  sh_route[$c["ep"]] += route / tot; sh_comm[$c["ep"]] += comm / tot
}
END {
  if (n == 0) { print "no results"; exit 1 }
  for (i = 2; i <= n; ++i) { v = ratios[i]; for (j = i - 1; j >= 1 && ratios[j] > v; --j) ratios[j + 1] = ratios[j]; ratios[j + 1] = v }
  med = n % 2 ? ratios[(n + 1) / 2] : 0.5 * (ratios[n / 2] + ratios[n / 2 + 1])
  printf "\nall-to-all ratio ours/plain (to_experts incl. block permutation vs bare all_to_all_v, same bytes per peer; target >= 0.85):\n"
  for (i = 1; i <= n_ep; ++i) { e = order[i]; printf "  ep=%s: medians: mean %.3f min %.3f; fastest samples: mean %.3f; in-place probe: mean %.3f (fastest %.3f)  [%d configurations; mean route%% %.1f, a2a%% %.1f]\n", e, ep_sum[e] / ep_n[e], ep_min[e], ep_sumb[e] / ep_n[e], ep_sumd[e] / ep_n[e], ep_sumdb[e] / ep_n[e], ep_n[e], 100 * sh_route[e] / ep_n[e], 100 * sh_comm[e] / ep_n[e] }
  printf "  all: median %.3f min %.3f max %.3f; %d of %d below 0.85 (fastest samples: %d below)\n", med, ratios[1], ratios[n], below, n, below_b
  if (bad) printf "WARNING: %d configurations where the timed pieces differ from MoeLayer::forward\n", bad
  printf "sweep wall time %d s; 1-min load average %s before, %s after on %d cores", secs, lb, la, cores
  if (lb + 0 > 0.5) printf " (other processes were running: timings, ep>=2 most, carry their interference)"
  printf "\n"
}' "$CSV" | tee "$OUT/summary.txt"
echo "CSV: $CSV  log: $LOG"
