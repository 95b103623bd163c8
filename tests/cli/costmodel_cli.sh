#!/usr/bin/env bash
# Owns the moe-costmodel CLI test (cli.costmodel, label cpu): a small exact CSV → exit 0 with the held-out error, the table to 1024 GPUs, JSON and Markdown; bad inputs → exit 2 with a message naming the problem.
# Usage: costmodel_cli.sh PATH/TO/moe-costmodel
set -uo pipefail
EXE="$1"
WORK="$(mktemp -d /tmp/moe_costmodel_cli_XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The known machine (ms): each all-to-all 0.02 per peer + bytes / 2 GB/s; experts 0.05 + 6·rows·H·I / 10 GFLOP/s;
# route 0.01 + 2·T·H·E / 5 GFLOP/s; plan 0.01 + 1e-5·T·K + 1e-3·E + 0.01·(ep−1); the permutes 0.01 + 1e-6·T·K·H.
# ep ∈ {1,2,4} × T ∈ {256,1024} × K ∈ {1,2}, every 3rd row held out; exact times, so the held-out error is ~0.
PHASES="route plan permute dispatch_a2a experts combine_a2a unpermute unpermute_bwd combine_a2a_bwd experts_bwd dispatch_a2a_bwd permute_bwd route_bwd"
awk -v phases="$PHASES" 'BEGIN {
  n = split(phases, ph, " ");
  printf "ep,tokens,hidden,ffn,experts,topk,capacity_factor,repeats";
  for (i = 1; i <= n; i++) printf ",%s_ms,%s_p10_ms,%s_p90_ms", ph[i], ph[i], ph[i];
  print ",fwd_ms,bwd_ms,layer_ms,overhead_pct,a2a_send_bytes_max,a2a_recv_bytes_max,rows_max,held_out";
  row = 0; H = 64; I = 128; E = 8;
  split("1 2 4", eps, " "); split("256 1024", ts, " "); split("1 2", ks, " ");
  for (a = 1; a <= 3; a++) for (b = 1; b <= 2; b++) for (c = 1; c <= 2; c++) {
    ep = eps[a]; T = ts[b]; K = ks[c]; rows = T * K; bytes = T * K * H * 4 * (ep - 1) / ep;
    fwd = 0; bwd = 0; line = sprintf("%d,%d,%d,%d,%d,%d,1.25,3", ep, T, H, I, E, K);
    for (i = 1; i <= n; i++) {
      p = ph[i];
      if (p ~ /a2a/) t = (ep > 1) ? 0.02 * (ep - 1) + bytes / 2e9 * 1e3 : 0;
      else if (p ~ /experts/) t = 0.05 + 6 * rows * H * I / 10e9 * 1e3;
      else if (p ~ /route/) t = 0.01 + 2 * T * H * E / 5e9 * 1e3;
      else if (p == "plan") t = 0.01 + 1e-5 * T * K + 1e-3 * E + 0.01 * (ep - 1);
      else t = 0.01 + 1e-6 * T * K * H;
      if (p == "experts") ex = t; if (p == "experts_bwd") exb = t;
      if (i <= 7) fwd += t; else bwd += t;
      line = line sprintf(",%.12g,%.12g,%.12g", t, 0.9 * t, 1.1 * t);
    }
    layer = fwd + bwd;
    line = line sprintf(",%.12g,%.12g,%.12g,%.12g,%.12g,%.12g,%d,%d", fwd, bwd, layer, 100 * (layer - ex - exb) / layer, bytes, bytes, rows, row % 3 == 2);
    print line; row++;
  }
}' > "$WORK/bench.csv"

out="$("$EXE" "$WORK/bench.csv" --json "$WORK/cm.json" --markdown "$WORK/cm.md" 2>&1)" || fail "good CSV: exit $?: $out"
grep -q "held-out prediction error: layer 0.0 % (mean)" <<<"$out" || fail "no ~0 % held-out error line: $out"
grep -Eq "^ +1024 +128 +8 +128 " <<<"$out" || fail "no 1024-GPU row (128 nodes, ep 8, edp 128): $out"
grep -q "alpha 20.00 us/peer, 1/beta 2.000 GB/s" <<<"$out" || fail "alpha-beta not recovered: $out"
grep -q "^| 1024 | 128 | 8 | 128 |" "$WORK/cm.md" || fail "markdown lacks the 1024 row: $(cat "$WORK/cm.md")"
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert [t['net'] for t in j['extrapolation']]==['nvlink-ib','nvlink-eth'], j['extrapolation']" "$WORK/cm.json" \
  || fail "JSON lacks the two presets"

expect2() {  # expect2 NAME PATTERN ARGS...: exit 2 and PATTERN in stderr
  local name="$1" pat="$2"; shift 2
  local err rc
  err="$("$EXE" "$@" 2>&1 >/dev/null)"; rc=$?
  [[ $rc -eq 2 ]] || fail "$name: exit $rc, expected 2: $err"
  grep -q -- "$pat" <<<"$err" || fail "$name: message lacks '$pat': $err"
}
expect2 missing_file "none.csv: cannot open" "$WORK/none.csv"
sed '5s/^\([0-9]*\),[0-9]*,/\1,xyz,/' "$WORK/bench.csv" > "$WORK/bad.csv"
expect2 malformed_row "bad.csv:5: column tokens: got 'xyz'" "$WORK/bad.csv"
head -1 "$WORK/bench.csv" | sed 's/,held_out//' > "$WORK/nocol.csv"
expect2 missing_column "nocol.csv:1: header has no column held_out" "$WORK/nocol.csv"
expect2 custom_incomplete "--net custom needs --inter-gbps" "$WORK/bench.csv" --net custom --intra-gbps 100 --intra-us 2
expect2 custom_flag_elsewhere "--inter-us applies to --net custom only" "$WORK/bench.csv" --inter-us 3
expect2 unknown_net "net" "$WORK/bench.csv" --net infiniband
expect2 bad_dims "topk 9 exceeds experts 8" "$WORK/bench.csv" --topk 9
out="$("$EXE" "$WORK/bench.csv" --net custom --intra-gbps 100 --intra-us 2 --inter-gbps 10 --inter-us 10 --max-gpus 64 2>&1)" \
  || fail "custom net: exit $?: $out"
grep -q "network custom: intra-node 100 GB/s 2 us, inter-node 10 GB/s 10 us" <<<"$out" || fail "custom caption: $out"
echo "cli.costmodel: all cases passed"
