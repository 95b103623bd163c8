#!/usr/bin/env bash
# Owns the moe-bench CI test: `mpirun -np 2 moe-bench --tiny --out DIR` finishes within a minute, times every phase of
# the real MoE layer at ep 1 and 2, writes CSV/JSON/Markdown, and prints the cost model's held-out prediction error
# (%) and its extrapolation table up to 1024 GPUs; bad arguments exit 2.
set -u
MPIRUN=$1
BENCH=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS
"$MPIRUN" --oversubscribe --bind-to none -np 2 "$BENCH" --tiny --out "$tmp/out" > "$tmp/log" 2>&1 ||
  { echo "FAIL: moe-bench --tiny exited $?"; cat "$tmp/log"; exit 1; }
took=$((SECONDS - t0))
((took < 60)) || { echo "FAIL: moe-bench --tiny took ${took} s (CI budget: under a minute)"; exit 1; }
grep -Eq "held-out prediction error: layer [0-9.]+ % \(mean\), [0-9.]+ % \(max\) over [0-9]+ configurations" "$tmp/log" ||
  { echo "FAIL: no held-out prediction error line"; cat "$tmp/log"; exit 1; }
grep -Eq "^ +1024 +128 " "$tmp/log" || { echo "FAIL: no 1024-GPU row in the extrapolation table"; cat "$tmp/log"; exit 1; }
for f in moe_bench.csv moe_bench.json cost_model.json scaling_table.md; do
  [[ -s "$tmp/out/$f" ]] || { echo "FAIL: $f missing or empty"; exit 1; }
done
python3 - "$tmp/out" <<'PY' || exit 1
import csv, json, math, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(d + "/moe_bench.csv")))
# --tiny: ep {1, 2} x T {64, 128, 256} x H {64, 128} x I {128} x E {4} x k {1, 2} x cf {0, 1.25}
assert len(rows) == 48, len(rows)
PH = ["route", "plan", "permute", "dispatch_a2a", "experts", "combine_a2a", "unpermute", "unpermute_bwd",
      "combine_a2a_bwd", "experts_bwd", "dispatch_a2a_bwd", "permute_bwd", "route_bwd"]
A2A = {"dispatch_a2a", "combine_a2a", "combine_a2a_bwd", "dispatch_a2a_bwd"}
held = 0
for r in rows:
    ep, T, H, K, E = (int(r[k]) for k in ("ep", "tokens", "hidden", "topk", "experts"))
    cf = float(r["capacity_factor"])
    for p in PH:
        med, lo, hi = (float(r[p + s]) for s in ("_ms", "_p10_ms", "_p90_ms"))
        assert 0 <= lo <= med <= hi, (p, lo, med, hi)
        if ep == 1 and p in A2A:
            assert med == 0, f"ep 1 has no all-to-all, {p} = {med}"
        elif p in ("route", "experts", "experts_bwd", "route_bwd"):
            assert med > 0, (p, r)
    fwd = sum(float(r[p + "_ms"]) for p in PH[:7])
    assert float(r["fwd_ms"]) > 0 and float(r["bwd_ms"]) > 0 and float(r["layer_ms"]) > 0
    send, recv, rows_max = int(r["a2a_send_bytes_max"]), int(r["a2a_recv_bytes_max"]), int(r["rows_max"])
    if ep == 1:
        assert send == recv == 0, r
    else:
        # rows cross ranks whole: fp32 rows of H floats; a rank sends at most its T·K pairs
        assert send > 0 and send % (4 * H) == 0 and send <= 4 * H * T * K, (send, H, T, K)
    # the busiest rank's experts see at most ep·T·K rows, and at most E_local·C under a capacity
    bound = ep * T * K
    if cf > 0:
        C = math.ceil(cf * T * K / E)  # expert capacity per source rank (C4.capacity)
        bound = min(bound, (E // ep) * C * ep)
    assert 0 < rows_max <= bound, (rows_max, bound, r)
    assert 0 <= float(r["overhead_pct"]) < 100
    held += int(r["held_out"])
assert held == 12, held  # every 4th configuration
j = json.load(open(d + "/moe_bench.json"))
assert j["world"] == 2 and len(j["configs"]) == 48
m = json.load(open(d + "/cost_model.json"))
assert json.dumps(m)  # the cost model's report is valid JSON
md = open(d + "/scaling_table.md").read()
assert "1024" in md and md.lstrip().startswith(("|", "#", "routing")), md[:400]
print("48 configurations, phases consistent, bytes/rows within bounds, 12 held out; reports written")
PY
# Bad arguments: exit 2 with a message, no rank left behind.
"$MPIRUN" --oversubscribe --bind-to none -np 2 "$BENCH" --ep 3 --experts 4 --out "$tmp/bad" > "$tmp/bad.log" 2>&1
rc=$?
((rc == 2)) || { echo "FAIL: --ep 3 on 2 ranks exited $rc, want 2"; cat "$tmp/bad.log"; exit 1; }
grep -q "ep values must divide the world size" "$tmp/bad.log" || { echo "FAIL: message"; cat "$tmp/bad.log"; exit 1; }
# Bad usage (an unknown network preset, a missing --out) is bad input too.
"$BENCH" --tiny --net infiniband --out "$tmp/bad2" > "$tmp/bad2.log" 2>&1
rc=$?
((rc == 2)) || { echo "FAIL: --net infiniband exited $rc, want 2"; cat "$tmp/bad2.log"; exit 1; }
"$BENCH" --tiny > "$tmp/bad3.log" 2>&1
rc=$?
((rc == 2)) || { echo "FAIL: no --out exited $rc, want 2"; cat "$tmp/bad3.log"; exit 1; }
echo "PASS (${took} s)"
