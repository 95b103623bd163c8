#!/usr/bin/env bash
# LoRA/QLoRA demo: train the three PEFT configs on small project-made base models, export, load with the real PEFT.
# Usage: launch/peft_demo.sh   (from a fresh checkout: installs dependencies and the Python venv, builds, ~2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh                      # Debian packages + the venv with torch, transformers, peft (for the check)
launch/demo.sh                       # builds; trains configs/tiny.yaml -> runs/tiny/hf, the Mixtral-style base
PY="${MOE_TRAIN_VENV:-$HOME/.cache/moe-train/venv}/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
train() { echo "peft demo: $*"; build/moe-train "$@" --set run.overwrite=true | grep -vE "step +[0-9]+/[0-9]+ " || true; }

# The Qwen3-MoE base of qwen3_moe_lora_router.yaml: the tiny demo shape as Qwen3-MoE -> runs/tiny_qwen3/hf.
train configs/tiny.yaml --set run.name=tiny_qwen3 --set model.arch=qwen3_moe

# 1. LoRA (attention + every expert, router frozen): run.dir/adapter is written at the end of training.
train configs/mixtral_lora.yaml
# ... the same adapter for transformers 4.x (one LoRA per expert Linear), and merged into a full HF model.
build/moe-export runs/mixtral_lora/checkpoints/step_60.h5 --format peft --peft-layout per-expert \
  --out runs/mixtral_lora/adapter_tf4
build/moe-export runs/mixtral_lora/checkpoints/step_60.h5 --merge --out runs/mixtral_lora/merged
"$PY" launch/peft_check.py --base runs/tiny/hf --adapter runs/mixtral_lora/adapter --merged runs/mixtral_lora/merged

# 2. QLoRA (NF4 + double quant base, LoRA on every linear). The merge folds the adapter into the dequantized NF4
#    base (what was trained); PEFT here loads the adapter onto the fp32 base, so the two differ by the NF4 error.
train configs/mixtral_qlora.yaml
build/moe-export runs/mixtral_qlora/checkpoints/step_60.h5 --merge --out runs/mixtral_qlora/merged
"$PY" launch/peft_check.py --base runs/tiny/hf --adapter runs/mixtral_qlora/adapter --merged runs/mixtral_qlora/merged

# 3. Router trained with the adapters (upcycled-model recipe): PEFT restores the routers from modules_to_save.
train configs/qwen3_moe_lora_router.yaml
build/moe-export runs/qwen3_moe_lora_router/checkpoints/step_60.h5 --merge --out runs/qwen3_moe_lora_router/merged
"$PY" launch/peft_check.py --base runs/tiny_qwen3/hf --adapter runs/qwen3_moe_lora_router/adapter \
  --merged runs/qwen3_moe_lora_router/merged
echo "peft demo: adapters in runs/{mixtral_lora,mixtral_qlora,qwen3_moe_lora_router}/adapter, merged models beside them"
