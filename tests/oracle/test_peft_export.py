# Owns the oracles of adapters out and in: moe-export --format peft (both layouts) and --merge against real PEFT.
"""A LoRA/QLoRA run of moe-train trains a few steps from a tiny HF model and checkpoints. Then:

  * moe-export --format peft (fused, transformers 5 layout): the real PEFT loads it onto the real transformers
    base (PeftModel.from_pretrained) and its logits equal ours (moe-debug --resume CKPT, fp32 vs float64, 1e-5);
    a trained router comes back through modules_to_save;
  * --peft-layout per-expert: the same in a transformers 4.x + PEFT venv (venv-tf4, tests/oracle/tf4_peft.py);
  * --merge: transformers loads the merged model and its logits equal PEFT's base + adapter (1e-5);
  * QLoRA: the base PEFT sees is every base linear round-tripped through bitsandbytes' NF4 (quantize_4bit /
    dequantize_4bit, block 64, double quant as the run), so "ours" is compared with what QLoRA trains against;
  * an adapter made by transformers-4 PEFT (one LoRA per expert Linear) loads into moe-train with equal logits.
Expected values come from transformers, PEFT and bitsandbytes; never from our binaries.
"""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_tiny
import ref_moe
from conftest import SEQ_LEN
from hf_tiny import check_close, print_report

RTOL = 1e-5
R, ALPHA = 4, 8.0
BATCH = 2  # micro_batch 2, grad_accum 1: moe-debug's logits are the first two windows

TF4_VENV = Path(os.environ.get("MOE_TRAIN_VENV_TF4", Path.home() / ".cache/moe-train/venv-tf4"))


def tf4(*args):
    py = TF4_VENV / "bin" / "python"
    if not py.exists():
        pytest.fail(f"{py} not found: run launch/setup.sh (it makes the transformers-4 venv) or set MOE_TRAIN_VENV_TF4")
    res = subprocess.run([str(py), str(Path(__file__).with_name("tf4_peft.py")), *map(str, args)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="2", TRANSFORMERS_VERBOSITY="error"))
    assert res.returncode == 0, f"tf4_peft.py {args[0]} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def export(*args):
    exe = hf_tiny.build_dir() / "moe-export"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first")
    res = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"moe-export {args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def targets_for(variant):
    experts = ["w1", "w3", "w2"] if variant.startswith("mixtral") else ["gate_proj", "up_proj", "down_proj"]
    return ["q_proj", "k_proj", "v_proj", "o_proj"] + experts


def nf4_roundtrip(model, double_quant):
    """Every base linear of a transformers-5 model replaced by bitsandbytes' NF4 round trip, each expert's gate,
    up and down on its own (the tensors QLoRA quantizes one by one)."""
    import bitsandbytes.functional as bnb

    # Flattened: bitsandbytes 0.50's CPU dequantize_4bit of a 2-D tensor does not invert its own packing (measured:
    # the same codes and absmax as the 1-D call, values off by up to 2x the 1-D error); blocks run along the
    # flattened tensor either way, as its GPU kernels read a Linear4bit weight.
    def rt(w):
        q, st = bnb.quantize_4bit(w.detach().float().reshape(-1).contiguous(), blocksize=64, quant_type="nf4",
                                  compress_statistics=double_quant)
        return bnb.dequantize_4bit(q, st).to(w.dtype).reshape(w.shape)

    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f"self_attn.{x}_proj.weight" in name for x in "qkvo"):
                p.copy_(rt(p))
                n += 1
            elif name.endswith("mlp.experts.gate_up_proj"):
                inter = p.shape[1] // 2
                for e in range(p.shape[0]):
                    p[e, :inter] = rt(p[e, :inter])
                    p[e, inter:] = rt(p[e, inter:])
                    n += 2
            elif name.endswith("mlp.experts.down_proj"):
                for e in range(p.shape[0]):
                    p[e] = rt(p[e])
                    n += 1
            elif name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")):
                p.copy_(rt(p))  # Qwen3 dense-MLP layers
                n += 1
    assert n > 0
    return model


def peft_logits(base_dir, adapter_dir, inputs, qlora_dq=None):
    from peft import PeftModel
    base = hf_tiny.load_hf_model(base_dir, torch.float64)
    if qlora_dq is not None:
        base = nf4_roundtrip(base, qlora_dq)
    pm = PeftModel.from_pretrained(base, str(adapter_dir)).to(torch.float64).eval()
    assert sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n) > 0, "PEFT loaded no LoRA parameters"
    saved = [n for n, _ in pm.named_parameters() if "modules_to_save" in n]
    with torch.no_grad():
        return pm(input_ids=inputs).logits, saved


CASES = [
    # (variant, method, train_router, double_quant)
    ("mixtral", "lora", False, None),
    ("qwen3_allmoe", "lora", True, None),
    ("mixtral", "qlora", True, True),
    ("qwen3_allmoe", "qlora", False, False),
]


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{v}-{m}-router_{'trained' if r else 'frozen'}" for v, m, r, _ in CASES])
def test_export_adapter_and_merge(case, hf_model_dir, token_file, tmp_path):
    variant, method, router, dq = CASES[case]
    path, toks = token_file
    d = hf_model_dir(variant)
    peft_cfg = {"method": method, "r": R, "alpha": ALPHA, "targets": targets_for(variant), "train_router": router,
                "dropout": 0.0}
    if dq is not None:
        peft_cfg["double_quant"] = dq
    cfg = hf_tiny.make_config(d, path, tmp_path / "run",
                              train={"seq_len": SEQ_LEN, "micro_batch": BATCH, "steps": 3, "lr": 2e-2},
                              peft=peft_cfg)
    run = hf_tiny.run_moe_train(cfg, tmp_path / "train")
    ckpt = sorted((run / "checkpoints").glob("step_*.h5"))[-1]
    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / "dbg", resume=ckpt)
    inputs, _ = ref_moe.global_batch(toks, SEQ_LEN, BATCH, 0)
    rep = {}

    # Fused (transformers 5) adapter into the real PEFT.
    export(ckpt, "--format", "peft", "--out", tmp_path / "adapter")
    want, saved = peft_logits(d, tmp_path / "adapter", inputs, qlora_dq=dq if method == "qlora" else None)
    assert bool(saved) == router, f"modules_to_save parameters {saved[:2]} with train_router={router}"
    check_close("peft_fused.logits", ours["logits"], want, RTOL, report=rep)

    # Merged model into plain transformers == PEFT's base + adapter.
    export(ckpt, "--merge", "--out", tmp_path / "merged")
    merged = hf_tiny.load_hf_model(tmp_path / "merged", torch.float64).eval()
    with torch.no_grad():
        got = merged(input_ids=inputs).logits
    check_close("merged.logits", got, want, RTOL, report=rep)

    # Per-expert (transformers 4) adapter into transformers 4 + PEFT (LoRA only: the tf4 side has no NF4 base).
    if method == "lora":
        export(ckpt, "--format", "peft", "--peft-layout", "per-expert", "--out", tmp_path / "adapter_v4")
        np.save(tmp_path / "inputs.npy", inputs.numpy())
        tf4("logits", d, tmp_path / "adapter_v4", tmp_path / "inputs.npy", tmp_path / "v4.npy")
        check_close("peft_per_expert.logits", ours["logits"], torch.from_numpy(np.load(tmp_path / "v4.npy")), RTOL,
                    report=rep)
    print_report(f"export {variant} {method} router={router}", rep)


@pytest.mark.parametrize("variant,router", [("mixtral", True), ("qwen3_allmoe", False)])
def test_transformers4_peft_adapter_in(variant, router, hf_model_dir, token_file, tmp_path):
    """An adapter made by transformers-4 PEFT (one LoRA per expert Linear, router in modules_to_save) continues in
    moe-train (model.adapter_from) with the logits of transformers-4 PEFT."""
    path, toks = token_file
    d = hf_model_dir(variant)
    adapter = tmp_path / "tf4_adapter"
    tf4("make-adapter", d, adapter, "--seed", 5, *(["--router"] if router else []))
    inputs, _ = ref_moe.global_batch(toks, SEQ_LEN, BATCH, 0)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    tf4("logits", d, adapter, tmp_path / "inputs.npy", tmp_path / "want.npy")
    cfg = hf_tiny.make_config(d, path, tmp_path / "run", train={"seq_len": SEQ_LEN, "micro_batch": BATCH},
                              peft={"method": "lora", "r": R, "alpha": ALPHA, "targets": targets_for(variant),
                                    "train_router": router, "dropout": 0.0},
                              model={"adapter_from": str(adapter)})
    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / "dbg")
    rep = {}
    check_close("logits", ours["logits"], torch.from_numpy(np.load(tmp_path / "want.npy")), RTOL, report=rep)
    print_report(f"transformers-4 PEFT adapter in: {variant} router={router}", rep)
