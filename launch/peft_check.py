# Owns the PEFT side of launch/peft_demo.sh: load a moe-train adapter with the real peft + transformers, compare.
"""Loads BASE with transformers and ADAPTER with peft (PeftModel.from_pretrained), scores the first tokens of a
byte-level text file (the demo models have vocab 256 = bytes), and with --merged compares the logits of the
merged model that moe-export --merge wrote against PEFT's.

Usage: python launch/peft_check.py --base runs/tiny/hf --adapter runs/mixtral_lora/adapter \
           [--merged runs/mixtral_lora/merged] [--text runs/demo/corpus.txt] [--tokens 256]
"""
import argparse

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForCausalLM


def load(d):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged")
    ap.add_argument("--text", default="runs/demo/corpus.txt")
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    with open(a.text, "rb") as f:
        data = f.read(a.tokens + 1)
    ids = torch.tensor([list(data)], dtype=torch.long)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        base_logits = load(a.base)(input_ids=inp).logits
        peft_model = PeftModel.from_pretrained(load(a.base), a.adapter).eval()
        peft_logits = peft_model(input_ids=inp).logits
        ce = lambda lg: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1)).item()
        n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        saved = sorted({n.split(".modules_to_save")[0].split("model.layers.")[-1]
                        for n, _ in peft_model.named_parameters() if "modules_to_save" in n})
        print(f"PEFT loaded {a.adapter}: {n_lora} LoRA parameters"
              + (f", trained routers restored (modules_to_save): {', '.join(saved)}" if saved else ", router frozen"))
        print(f"loss on {inp.shape[1]} tokens of {a.text}: base {ce(base_logits):.4f}, base + adapter (PEFT) "
              f"{ce(peft_logits):.4f}")
        if a.merged:
            merged_logits = load(a.merged)(input_ids=inp).logits
            d = (merged_logits - peft_logits).abs().max().item()
            print(f"merged model {a.merged}: loss {ce(merged_logits):.4f}; max |logits - PEFT's| = {d:.3g} "
                  f"(max |logits| {peft_logits.abs().max().item():.3g})")


if __name__ == "__main__":
    main()
