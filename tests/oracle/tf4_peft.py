# Owns the transformers-4 side of the PEFT oracles: run by the venv-tf4 python (transformers 4.x + its PEFT).
"""Two commands, each in a fresh process of the transformers-4 venv (one LoRA per expert nn.Linear there):

  make-adapter BASE OUT --seed S [--router]   PEFT adapter with random values on q/k/v/o and every expert's
                                              gate/up/down Linear (and the router as modules_to_save), saved fp32
  logits BASE ADAPTER TOKENS.npy OUT.npy      float64 logits of PeftModel.from_pretrained(BASE, ADAPTER) on the
                                              [B, L] int64 inputs; prints the library versions

BASE is a tiny Mixtral / Qwen3-MoE directory written by transformers 5 (per-expert tensors on disk).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM


def load(base):
    """BASE as transformers 4 reads it; config keys that transformers 5 renamed on save are mapped back
    (Qwen3-MoE num_local_experts -> num_experts, rope_parameters.rope_theta -> rope_theta)."""
    raw = json.loads((Path(base) / "config.json").read_text())
    config = AutoConfig.from_pretrained(base)
    if config.model_type == "qwen3_moe" and "num_local_experts" in raw:
        config.num_experts = raw["num_local_experts"]
    theta = (raw.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None:
        config.rope_theta = theta
    m = AutoModelForCausalLM.from_pretrained(base, config=config, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    return m.to(torch.float64).eval()


def make_adapter(a):
    model = load(a.base)
    mixtral = model.config.model_type == "mixtral"
    experts = ["w1", "w3", "w2"] if mixtral else ["gate_proj", "up_proj", "down_proj"]
    router = ("block_sparse_moe.gate" if mixtral else "mlp.gate") if a.router else None
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"] + experts,
                     modules_to_save=[router] if router else None)
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_((0.2 * torch.randn(p.shape, generator=g)).float().double())
            if "modules_to_save" in name:
                p.add_((0.05 * torch.randn(p.shape, generator=g)).float().double())
    pm.float().save_pretrained(a.out)


def logits(a):
    model = PeftModel.from_pretrained(load(a.base), a.adapter).to(torch.float64).eval()
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_lora > 0, "PEFT loaded no LoRA parameters"
    inputs = torch.from_numpy(np.load(a.tokens))
    with torch.no_grad():
        out = model(input_ids=inputs).logits
    np.save(a.out, out.numpy())
    print(f"transformers {transformers.__version__} peft {peft.__version__}: {n_lora} LoRA parameters")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-adapter")
    m.add_argument("base")
    m.add_argument("out")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--r", type=int, default=4)
    m.add_argument("--alpha", type=float, default=8.0)
    m.add_argument("--router", action="store_true")
    lg = sub.add_parser("logits")
    lg.add_argument("base")
    lg.add_argument("adapter")
    lg.add_argument("tokens")
    lg.add_argument("out")
    a = ap.parse_args()
    assert transformers.__version__.startswith("4."), f"needs transformers 4.x, found {transformers.__version__}"
    torch.set_num_threads(2)
    make_adapter(a) if a.cmd == "make-adapter" else logits(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
