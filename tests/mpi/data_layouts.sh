#!/usr/bin/env bash
# Owns the data layout/resume test: data.mask_prompt over a token directory and data.mix of two sources (shuffled)
# give the same losses on 1, 2 (ep 2, ZeRO-3) and 4 ranks with the same global batch (N = unmasked targets summed over
# every rank), and a resumed run continues the same sample order (its losses equal the uninterrupted run's).
set -u
MOE_TRAIN=$1
SRC=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
FAILED=0
fail() { echo "FAIL: $*"; FAILED=1; }
# Two token directories (vocab 256 ids, answer-mask runs) written with the standard library only.
python3 - "$tmp" <<'PY'
import json, os, random, struct, sys
random.seed(7)
for name, n in (("a", 30000), ("b", 12000)):
    d = os.path.join(sys.argv[1], name)
    os.makedirs(d)
    ids = [random.randrange(256) for _ in range(n)]
    mask, on = [], 0
    while len(mask) < n:  # prompt/answer runs of 3..40 tokens
        mask += [on] * random.randrange(3, 41)
        on ^= 1
    mask = mask[:n]
    open(os.path.join(d, "tokens.bin"), "wb").write(struct.pack(f"<{n}I", *ids))
    open(os.path.join(d, "loss_mask.bin"), "wb").write(bytes(mask))
    json.dump({"format_version": 1, "num_tokens": n}, open(os.path.join(d, "meta.json"), "w"))
PY
run() {  # run NP DIR ARGS...
  local np=$1 dir=$2
  shift 2
  timeout 240 mpirun --oversubscribe --bind-to none -np "$np" "$MOE_TRAIN" "$SRC/configs/tiny.yaml" "${common[@]}" \
    --set run.dir="$dir" "$@" >"$dir.log" 2>&1
  RC=$?
  [ "$RC" -eq 0 ] || { fail "np $np $dir: exit $RC"; sed 's/^/  | /' "$dir.log" | tail -20; }
}
# Global batch 8 windows of 64 on every layout; dropless routing.
common=(--set data.format=tokens --set data.path= --set data.mask_prompt=true --set data.shuffle=true
        --set "data.mix=[{path: $tmp/a, weight: 0.7}, {path: $tmp/b, weight: 0.3}]"
        --set train.steps=6 --set train.micro_batch=2 --set moe.capacity_factor=0 --set checkpoint.export_hf=false
        --set log.every=1 --set checkpoint.every=3)
run 1 "$tmp/np1" --set train.grad_accum=4
run 2 "$tmp/np2" --set train.grad_accum=2 --set parallel.ep=2 --set parallel.zero=3
run 4 "$tmp/np4" --set train.grad_accum=1 --set parallel.ep=2 --set parallel.zero=3
# Resume: 3 steps, then --resume auto to 6 on 2 ranks.
run 2 "$tmp/res" --set train.grad_accum=2 --set parallel.ep=2 --set parallel.zero=3 --set train.steps=3
timeout 240 mpirun --oversubscribe --bind-to none -np 2 "$MOE_TRAIN" "$SRC/configs/tiny.yaml" "${common[@]}" \
  --set run.dir="$tmp/res" --set train.grad_accum=2 --set parallel.ep=2 --set parallel.zero=3 --resume auto \
  >"$tmp/res2.log" 2>&1 || { fail "resume: exit $?"; tail -20 "$tmp/res2.log"; }

python3 - "$tmp" <<'PY' || FAILED=1
import json, sys
tmp = sys.argv[1]
def losses(d):
    return {m["step"]: m["loss"] for m in map(json.loads, open(f"{tmp}/{d}/metrics.jsonl")) if "loss" in m and m["step"] > 0}
ref, bad = losses("np1"), []
assert sorted(ref) == list(range(1, 7)), f"np1 steps {sorted(ref)}"
for d in ("np2", "np4"):
    got = losses(d)
    for s in range(1, 7):
        rel = abs(got.get(s, float("nan")) - ref[s]) / ref[s]
        print(f"{d} step {s}: loss {got.get(s)} vs np1 {ref[s]} (rel {rel:.1e})")
        if not rel <= 1e-5: bad.append(f"{d} step {s}: rel {rel:.1e}")
np2, res = losses("np2"), losses("res")
for s in range(1, 7):
    if res.get(s) != np2[s]: bad.append(f"resume step {s}: loss {res.get(s)} != uninterrupted {np2[s]}")
assert not bad, "\n".join(bad)
PY
[ "$FAILED" -eq 0 ] || exit 1
echo "data layouts (mask_prompt + mix + shuffle) and resume: OK"
