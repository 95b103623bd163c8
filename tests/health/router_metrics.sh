#!/usr/bin/env bash
# Owns the router-health metrics test of a real run: per-layer fields in metrics.jsonl every log.every steps, their
# agreement with the step-level fields they refine, churn on the probe batch, model TFLOP/s and MFU.
set -u
MOE_TRAIN=$1
here=$(dirname "$0")
source "$here/../ckpt/common.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make_inputs "$tmp"
# 2 ranks' worth of data order on one process is not needed: one process, grad_accum 2, 6 steps, per-layer every 2.
"$MOE_TRAIN" "$tmp/tiny.yaml" --set train.steps=6 --set log.every=2 --set checkpoint.every=0 \
  --set moe.aux_loss_form=layer > "$tmp/a.log" 2>&1 || { echo "FAIL: run"; cat "$tmp/a.log"; exit 1; }
grep -q "MFU against .* TFLOP/s per device (measured GEMM on this CPU)" "$tmp/a.log" ||
  { echo "FAIL: no MFU peak line"; cat "$tmp/a.log"; exit 1; }
python3 - "$tmp/run/metrics.jsonl" <<'PY'
import json, math, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["step"] for l in lines] == [1, 2, 3, 4, 5, 6], [l["step"] for l in lines]
KEYS = {"layer", "aux_loss", "z_loss", "expert_utilization", "load_imbalance", "routing_entropy", "dropped_frac",
        "router_logit_norm", "routing_churn"}
for l in lines:
    s = l["step"]
    assert l["model_tflops"] > 0, l
    assert l["mfu"] is not None and 0 < l["mfu"] < 1.5, f"step {s}: mfu {l['mfu']}"
    if s % 2:
        assert "router_layers" not in l and "expert_load" not in l, f"step {s}: per-layer fields off log.every"
        continue
    layers = l["router_layers"]
    assert [x["layer"] for x in layers] == [0, 1], layers
    for x in layers:
        assert set(x) == KEYS, set(x) ^ KEYS
    # Step-level fields are the per-layer ones combined (DESIGN §6): aux (layer form) and z are the layer means,
    # imbalance the max, utilization and entropy the means (equal expert counts), dropped_frac the pooled share.
    mean = lambda k: sum(x[k] for x in layers) / len(layers)
    assert math.isclose(l["aux_loss"], mean("aux_loss"), rel_tol=1e-12), (l["aux_loss"], mean("aux_loss"))
    assert math.isclose(l["z_loss"], mean("z_loss"), rel_tol=1e-12), (l["z_loss"], mean("z_loss"))
    assert l["load_imbalance"] == max(x["load_imbalance"] for x in layers)
    assert math.isclose(l["expert_utilization"], mean("expert_utilization"), rel_tol=1e-12)
    assert math.isclose(l["routing_entropy"], mean("routing_entropy"), rel_tol=1e-12)
    assert math.isclose(l["dropped_frac"], mean("dropped_frac"), rel_tol=1e-12)  # same pairs per layer
    # Each layer's health from its own expert_load row, recomputed here.
    for x, load in zip(layers, l["expert_load"]):
        E, tot = len(load), sum(load)
        assert x["expert_utilization"] == sum(c > 0 for c in load) / E
        assert math.isclose(x["load_imbalance"], max(load) / (tot / E), rel_tol=1e-12)
        ent = -sum(c / tot * math.log(c / tot) for c in load if c) / math.log(E)
        assert math.isclose(x["routing_entropy"], ent, rel_tol=1e-12)
        assert x["router_logit_norm"] > 0 and 0 <= x["dropped_frac"] < 1
        # z = mean lse² ≥ (mean lse)²... and lse ≥ max logit ≥ -‖l‖: a loose consistency bound on the two norms.
        assert x["z_loss"] >= 0
    churn = [x["routing_churn"] for x in layers]
    if s == 2:
        assert churn == [None, None], f"step 2 is the first probe: churn must be null, got {churn}"
    else:
        assert all(c is not None and 0 <= c <= 1 for c in churn), churn
print("router_layers at steps 2, 4, 6; step fields = per-layer combinations; churn null then measured; MFU set")
PY
rc=$?
(( rc == 0 )) || { head -c 3000 "$tmp/run/metrics.jsonl"; exit 1; }
# train.peak_tflops overrides the measurement: MFU = model_tflops / peak exactly.
"$MOE_TRAIN" "$tmp/tiny.yaml" --set train.steps=2 --set train.peak_tflops=0.5 --set run.dir="$tmp/run2" \
  --set checkpoint.every=0 > "$tmp/b.log" 2>&1 || { echo "FAIL: run with peak_tflops"; cat "$tmp/b.log"; exit 1; }
grep -q "MFU against 0.5 TFLOP/s per device (train.peak_tflops)" "$tmp/b.log" || { echo "FAIL: peak line"; cat "$tmp/b.log"; exit 1; }
python3 - "$tmp/run2/metrics.jsonl" <<'PY' || exit 1
import json, math, sys
for l in map(json.loads, open(sys.argv[1])):
    assert math.isclose(l["mfu"], l["model_tflops"] / 0.5, rel_tol=1e-12), l
print("mfu = model_tflops / train.peak_tflops")
PY
# A peak below what the run achieves (MFU > 1) is called out once.
"$MOE_TRAIN" "$tmp/tiny.yaml" --set train.steps=3 --set train.peak_tflops=1e-9 --set run.dir="$tmp/run3" \
  --set checkpoint.every=0 > "$tmp/c.log" 2>&1 || { echo "FAIL: run with a tiny peak"; cat "$tmp/c.log"; exit 1; }
n=$(grep -c "MFU .* > 1: .* set train.peak_tflops" "$tmp/c.log")
((n == 1)) || { echo "FAIL: MFU > 1 warned $n times, want once"; cat "$tmp/c.log"; exit 1; }
echo PASS
