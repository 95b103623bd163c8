# Probe (not a ctest): prints how the installed PEFT stores LoRA adapters for fused MoE experts, attention and router.
"""Run: ~/.cache/moe-train/venv/bin/python tests/oracle/peft_layout_probe.py

Builds tiny random Mixtral and Qwen3-MoE models from configs (no downloads), wraps them with
LoraConfig(target_modules=q/k/v/o, target_parameters=experts.gate_up_proj/down_proj, modules_to_save=router),
saves the adapter, prints tensor names/shapes and adapter_config.json, then rebuilds every expert's effective
weight from the saved tensors by the formula of docs/PEFT_LAYOUT.md and asserts it equals PEFT's merge_and_unload.
"""
import json
import os
import tempfile

import torch
import transformers
import peft
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

E, H, I, R, ALPHA = 4, 16, 12, 3, 6  # experts, hidden, expert intermediate, rank, alpha (distinct on purpose)


def tiny(kind):
    common = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=64, max_position_embeddings=64, num_experts_per_tok=2)
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(intermediate_size=I, num_local_experts=E, **common)
        return transformers.MixtralForCausalLM(cfg)
    cfg = transformers.Qwen3MoeConfig(intermediate_size=32, moe_intermediate_size=I, num_experts=E, head_dim=4,
                                      decoder_sparse_step=1, mlp_only_layers=[], **common)
    return transformers.Qwen3MoeForCausalLM(cfg)


def expert_formula(sd, prefix, scaling):
    """Per-expert dW[e] (shape of base[e] = [out, in]) from saved tensors:
    A = lora_A [E*r, in] -> view (E, r, in)             (expert-major rows)
    B = lora_B [out, r*E] -> view (out, r, E)            (expert-MINOR columns: col = k*E + e)
    dW[e] = scaling * B[:, :, e] @ A[e]"""
    A = sd[prefix + "lora_A.weight"]
    B = sd[prefix + "lora_B.weight"]
    A3 = A.reshape(E, R, A.shape[-1])
    B3 = B.reshape(B.shape[0], R, E)
    return torch.stack([scaling * B3[:, :, e] @ A3[e] for e in range(E)])


def probe(kind, use_rslora):
    torch.manual_seed(0)
    model = tiny(kind).float().eval()
    print(f"\n=== {kind} (use_rslora={use_rslora}) ===")
    for n, p in model.named_parameters():
        if ".layers.0." in n:
            print(f"  base {n:55s} {tuple(p.shape)}")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, use_rslora=use_rslora,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                     modules_to_save=["mlp.gate"])
    pm = get_peft_model(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # B is zero at init; randomise all adapter tensors so the check is not trivial
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.1)
            if "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.1)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        logits_peft = pm(ids).logits
    print("  in-memory trainable:")
    for n, p in pm.named_parameters():
        if p.requires_grad and ".layers.0." in n:
            print(f"    {n:80s} {tuple(p.shape)}")
    with tempfile.TemporaryDirectory() as d:
        pm.save_pretrained(d)
        sd = load_file(os.path.join(d, "adapter_model.safetensors"))
        acfg = json.load(open(os.path.join(d, "adapter_config.json")))
    print("  adapter_model.safetensors (layer 0):")
    for n in sorted(sd):
        if ".layers.0." in n:
            print(f"    {n:80s} {tuple(sd[n].shape)} {sd[n].dtype}")
    print(f"  total saved tensors: {len(sd)}")
    keep = ["r", "lora_alpha", "use_rslora", "target_modules", "target_parameters", "modules_to_save", "peft_type",
            "task_type", "base_model_name_or_path", "lora_dropout", "bias", "fan_in_fan_out", "init_lora_weights",
            "rank_pattern", "alpha_pattern", "layers_to_transform", "peft_version"]
    print("  adapter_config.json:", json.dumps({k: acfg.get(k) for k in keep}, default=str))
    print("  all adapter_config keys:", sorted(acfg))
    scaling = ALPHA / (R ** 0.5) if use_rslora else ALPHA / R
    merged = pm.merge_and_unload()
    msd = {n: p.detach() for n, p in merged.named_parameters()}
    worst = 0.0
    for L in range(2):
        mp = f"model.layers.{L}."
        sp = f"base_model.model.model.layers.{L}."
        for pname in ["gate_up_proj", "down_proj"]:
            key = mp + "mlp.experts." + pname
            # saved prefix: the experts module holds two nested ParamWrappers; find this param's lora pair
            cands = [k[:-len("lora_A.weight")] for k in sd if k.startswith(sp + "mlp.experts") and k.endswith("lora_A.weight")]
            hit = [c for c in cands if sd[c + "lora_A.weight"].shape[-1] == base[key].shape[-1]
                   and sd[c + "lora_B.weight"].shape[0] == base[key].shape[1]]
            assert len(hit) == 1, (pname, cands)
            dw = expert_formula(sd, hit[0], scaling)
            d = (base[key] + dw - msd[key]).abs().max().item()
            worst = max(worst, d)
            if L == 0:
                print(f"  {pname}: saved prefix {hit[0]!r}  base {tuple(base[key].shape)}  max|recon-merged|={d:.3g}")
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            key = mp + f"self_attn.{proj}.weight"
            A = sd[sp + f"self_attn.{proj}.lora_A.weight"]
            B = sd[sp + f"self_attn.{proj}.lora_B.weight"]
            d = (base[key] + scaling * B @ A - msd[key]).abs().max().item()
            worst = max(worst, d)
        gkey = mp + "mlp.gate.weight"
        d = (sd[sp + "mlp.gate.weight"] - msd[gkey]).abs().max().item()
        worst = max(worst, d)
    with torch.no_grad():
        logits_merged = merged(ids).logits
    ld = (logits_peft - logits_merged).abs().max().item()
    print(f"  scaling={scaling:.6g}  worst |reconstruction - merged| = {worst:.3g}; |logits peft - merged| = {ld:.3g}")
    assert worst < 1e-5 and ld < 1e-4, (worst, ld)


def probe_targets():
    """Which target_parameters spellings match the fused experts (a miss raises in get_peft_model)."""
    print("\n=== target_parameters spellings (mixtral) ===")
    for t in ["mlp.experts.gate_up_proj", "experts.gate_up_proj", "gate_up_proj", "model.layers.0.mlp.experts.gate_up_proj",
              "experts.w1", "w1", "mlp.experts.gate_up_proj.weight"]:
        m = tiny("mixtral")
        try:
            pm = get_peft_model(m, LoraConfig(r=2, target_parameters=[t]))
            n = sum(1 for k, _ in pm.named_parameters() if "lora_A" in k)
            print(f"  {t!r:45s} -> {n} wrapped")
        except Exception as ex:  # noqa: BLE001 (probe: report whatever PEFT says)
            print(f"  {t!r:45s} -> {type(ex).__name__}: {str(ex)[:110]}")
    print("=== nesting vs target_parameters order (mixtral) ===")
    for tp in [["mlp.experts.down_proj", "mlp.experts.gate_up_proj"], ["mlp.experts.gate_up_proj"], ["mlp.experts.down_proj"]]:
        pm = get_peft_model(tiny("mixtral"), LoraConfig(r=R, target_parameters=tp))
        print(f"  {tp}:", [(n.split("layers.0.")[1], tuple(p.shape)) for n, p in pm.named_parameters()
                           if "layers.0." in n and "lora_" in n])
    print("=== router as a LoRA target (mixtral) ===")
    for t in [["gate"], ["mlp.gate"]]:
        try:
            get_peft_model(tiny("mixtral"), LoraConfig(r=2, target_modules=t))
            print(f"  target_modules={t} -> accepted")
        except Exception as ex:  # noqa: BLE001
            print(f"  target_modules={t} -> {type(ex).__name__}: {str(ex)[:110]}")


if __name__ == "__main__":
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  peft {peft.__version__}")
    probe("mixtral", False)
    probe("qwen3_moe", False)
    probe("mixtral", True)
    probe_targets()
    print("\nOK: per-expert reconstruction from adapter_model.safetensors equals PEFT merge_and_unload")
