# Owns the LoRA oracles against the real peft + transformers: forward, backward, frozen base, router trained or frozen.
"""LoRA forward/backward of moe-train == PEFT's on tiny HF MoE models.

PEFT (the real library) wraps a transformers v5 model: attention projections by target_modules,
the fused experts by target_parameters (gate_up_proj / down_proj), the router by modules_to_save.
Its adapters are set to random values and saved with save_pretrained; moe-train reads that adapter
directory (model.adapter_from) and computes one step's logits and gradients (moe-debug grads).
Expected values come from PEFT's float64 forward/backward; our side runs in fp32.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import hf_tiny
import ref_moe
from conftest import SEQ_LEN
from hf_tiny import check_close, print_report

RTOL = 1e-5
R = 4
ALPHA = 8.0


def peft_model(hf_dir, targets, router, rslora, seed, dtype=torch.float64):
    """transformers model in `dtype` wrapped by PEFT with random (fp32-representable) adapters."""
    from peft import LoraConfig, get_peft_model
    model = hf_tiny.load_hf_model(hf_dir, dtype)
    attn = [t for t in targets if t.endswith("_proj") and t[0] in "qkvo"]
    params = [f"mlp.experts.{t}" for t in targets if t in ("gate_up_proj", "down_proj")]
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, use_rslora=rslora,
                     target_modules=attn or None, target_parameters=params or None,
                     modules_to_save=["mlp.gate"] if router else None)
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_((0.2 * torch.randn(p.shape, generator=g)).float().to(dtype))
            if router and "modules_to_save" in name:
                p.add_((0.05 * torch.randn(p.shape, generator=g)).float().to(dtype))
    pm.train()
    return pm


def our_names(pm, arch, get):
    """{our logical name: tensor} of PEFT's adapter (and trained router) tensors, from get(param)
    (data or grad), with the fused expert layout of docs/PEFT_LAYOUT.md split per expert."""
    blk = "block_sparse_moe" if arch == "mixtral" else "mlp"
    cfg = pm.base_model.model.config
    E = cfg.num_local_experts if arch == "mixtral" else cfg.num_experts
    out = {}
    for name, p in pm.named_parameters():
        if not p.requires_grad:
            continue
        t = get(p)
        t = torch.zeros_like(p) if t is None else t.detach()
        n = name.replace("base_model.model.", "", 1).replace(".default", "")
        if "modules_to_save" in n:  # model.layers.L.mlp.gate.modules_to_save.weight
            layer = n.split(".")[2]
            out[f"model.layers.{layer}.{blk}.gate.weight"] = t
            continue
        if ".experts." in n:
            layer = n.split(".")[2]
            half = "lora_A" if ".lora_A." in n else "lora_B"
            # Which fused parameter: tell them apart by shape (A: in features; B: out features).
            H = cfg.hidden_size
            what = None
            if half == "lora_A":
                what = "gate_up_proj" if t.shape[1] == H else "down_proj"
            else:
                what = "down_proj" if t.shape[0] == H else "gate_up_proj"
            for e in range(E):
                key = f"model.layers.{layer}.{blk}.experts.{e}.{what}.{half}.weight"
                out[key] = t[e * R:(e + 1) * R] if half == "lora_A" else t[:, e::E]
            continue
        out[n] = t
    return out


def reference(pm, inputs, targets):
    out = pm(input_ids=inputs)
    logits = out.logits
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    ce.backward()
    return logits.detach(), ce.detach()


CASES = [
    # (variant, targets, router trained, rslora)
    ("mixtral", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"], False, False),
    ("mixtral", ["q_proj", "v_proj", "gate_up_proj", "down_proj"], True, True),
    ("qwen3_allmoe", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"], True, False),
    ("mixtral_tied", ["o_proj", "down_proj"], False, False),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_lora_forward_backward_vs_peft(case, hf_model_dir, token_file, tmp_path):
    """Logits, loss and every adapter (and trained-router) gradient of moe-train == PEFT's
    (fp32 vs float64, 1e-5), with attention + expert targets; only adapter (and router)
    tensors get gradients."""
    variant, targets, router, rslora = CASES[case]
    path, toks = token_file
    d = hf_model_dir(variant)
    arch = "mixtral" if variant.startswith("mixtral") else "qwen3"
    pm = peft_model(d, targets, router, rslora, seed=11 + case)
    adapter_dir = tmp_path / "adapter"
    pm32 = copy.deepcopy(pm).float()
    pm32.save_pretrained(str(adapter_dir))
    ours_targets = [t for t in targets if t not in ("gate_up_proj",)] + (["w1", "w3"] if "gate_up_proj" in targets else [])
    cfg = hf_tiny.make_config(d, path, tmp_path / "run",
                              train={"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 2},
                              peft={"method": "lora", "r": R, "alpha": ALPHA, "use_rslora": rslora,
                                    "targets": ours_targets, "train_router": router, "dropout": 0.0},
                              model={"adapter_from": str(adapter_dir)})
    inputs, targets_t = ref_moe.global_batch(toks, SEQ_LEN, 4, 0)
    logits, ce = reference(pm, inputs, targets_t)
    want = our_names(pm, arch, lambda p: p.grad)
    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / "dbg")
    rep = {}
    check_close("logits", ours["logits"], logits, RTOL, report=rep)
    check_close("loss", ours["loss"].reshape(()), ce, RTOL, report=rep)
    got = {k[len("grad."):] for k in ours if k.startswith("grad.")}
    assert got == set(want), f"gradients: extra {sorted(got - set(want))[:4]}, missing {sorted(set(want) - got)[:4]}"
    for k, g in want.items():
        assert g.abs().max() > 0, f"PEFT gradient of {k} is zero: the case does not exercise it"
        check_close(f"grad.{k}", ours["grad." + k], g, RTOL, report=rep)
    print_report(f"LoRA vs PEFT {variant} {targets} router={router} rslora={rslora}", rep)
