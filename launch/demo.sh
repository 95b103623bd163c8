#!/usr/bin/env bash
# Demo: set up, build, and train configs/tiny.yaml on real English text (the Debian 'fortunes' corpus, byte-level tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh --no-venv
launch/build.sh
mkdir -p runs/demo
if [[ ! -s runs/demo/corpus.txt || ! -s runs/demo/heldout.txt ]]; then
  # Every fortune file (not the .dat indexes), printable ASCII only; the last 5% is held out for evaluation.
  for f in /usr/share/games/fortunes/*; do
    case "$f" in *.dat|*.u8) continue ;; esac
    [[ -f "$f" ]] && cat "$f"
  done | LC_ALL=C tr -cd '\11\12\40-\176' > runs/demo/all.txt
  total=$(wc -c < runs/demo/all.txt)
  head -c $((total * 95 / 100)) runs/demo/all.txt > runs/demo/corpus.txt
  tail -c +$((total * 95 / 100 + 1)) runs/demo/all.txt > runs/demo/heldout.txt
  rm runs/demo/all.txt
fi
echo "demo: corpus runs/demo/corpus.txt ($(wc -c < runs/demo/corpus.txt) bytes of English text)," \
  "held out runs/demo/heldout.txt ($(wc -c < runs/demo/heldout.txt) bytes)"
# The tiny model is too small to gain from threads; one thread also keeps it fast on a busy machine.
# A rerun starts over (run.overwrite); add --resume auto to continue the previous demo run instead.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" ./build/moe-train configs/tiny.yaml --set run.overwrite=true \
  --set eval.data=runs/demo/heldout.txt --set eval.every=50 --set eval.batches=16 --set eval.at_start=true "$@"
echo "demo: metrics in runs/tiny/metrics.jsonl"
