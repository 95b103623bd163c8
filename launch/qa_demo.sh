#!/usr/bin/env bash
# Domain Q&A demo, end to end: JSONL -> moe-prep build -> moe-train (80/20 Q&A/general mix, answer-only loss, packed
# documents, held-out eval) -> HF export with the tokenizer -> generate with transformers.
# Usage: launch/qa_demo.sh [moe-train --set overrides...]   (from a fresh checkout: installs, builds; a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh                      # Debian packages + the venv (tokenizers, transformers, for data and generation)
launch/build.sh
PY="${MOE_TRAIN_VENV:-$HOME/.cache/moe-train/venv}/bin/python"
D=runs/qa_demo_data
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
# 1. A byte-level BPE tokenizer with a ChatML template, and Q&A pairs + general text, from the fortunes corpus.
"$PY" launch/qa_demo.py prepare "$D"
# 2. Token directories: Q&A rendered as ChatML chats with the loss on the answers, the held-out Q&A alike, general text.
build/moe-prep build --tokenizer "$D/tokenizer" --format jsonl --chat-template auto --mask-prompt --out "$D/qa" "$D/qa_train.jsonl"
build/moe-prep build --tokenizer "$D/tokenizer" --format jsonl --chat-template auto --mask-prompt --out "$D/qa_eval" "$D/qa_eval.jsonl"
build/moe-prep build --tokenizer "$D/tokenizer" --format text --out "$D/general" "$D/general.txt"
# 3. Fine-tune (configs/qa_demo.yaml): eval loss on the held-out answers before, during and after.
build/moe-train configs/qa_demo.yaml --set run.overwrite=true "$@"
# 4. The exported model (runs/qa_demo/hf: weights, config, tokenizer files, generation_config) in transformers.
"$PY" launch/qa_demo.py generate runs/qa_demo/hf "$D"
echo "qa demo: metrics in runs/qa_demo/metrics.jsonl, model in runs/qa_demo/hf"
