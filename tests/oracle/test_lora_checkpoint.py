# Owns the oracle on what a LoRA run's HDF5 checkpoint holds (read with h5py): optimizer state, frozen and base tensors.
"""Only adapter (and trained-router) tensors have optimizer state; frozen tensors are saved bitwise as loaded.

A LoRA run of moe-train (attention + every expert, router frozen or trained) trains a few steps from a tiny HF
model and checkpoints. The checkpoint is read with h5py (not our reader); the expected sets come from the HF
model's own parameter names (safetensors of the base), not from moe-train:
  * /optim holds exactly the lora_A/lora_B tensors (+ every MoE router with train_router), each with exp_avg and
    exp_avg_sq, nonzero after training;
  * base linears (q/k/v/o, expert weights) are not in the checkpoint at all (never written);
  * every other /model tensor (embeddings, norms, lm_head, a frozen router) equals the base file bitwise.
"""
import re

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

import hf_tiny
from conftest import SEQ_LEN

BASE_LINEAR = re.compile(r"self_attn\.[qkvo]_proj\.weight$|experts\.")
ROUTER = re.compile(r"(mlp|block_sparse_moe)\.gate\.weight$")


def hdf5_names(group):
    out = []
    group.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("router", [False, True], ids=["router_frozen", "router_trained"])
def test_lora_checkpoint_state(router, hf_model_dir, token_file, tmp_path):
    path, _ = token_file
    d = hf_model_dir("mixtral")
    base = {}
    for f in sorted(d.glob("*.safetensors")):
        base.update(load_file(str(f)))
    cfg = hf_tiny.make_config(d, path, tmp_path / "run",
                              train={"seq_len": SEQ_LEN, "micro_batch": 2, "steps": 3, "lr": 1e-2},
                              peft={"method": "lora", "r": 4, "alpha": 8.0,
                                    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"],
                                    "train_router": router, "dropout": 0.0})
    run = hf_tiny.run_moe_train(cfg, tmp_path)
    ckpts = sorted((run / "checkpoints").glob("step_*.h5"))
    assert ckpts, f"no checkpoint in {run / 'checkpoints'}"
    with h5py.File(ckpts[-1], "r") as f:
        model = {n: f["model"][n][()] for n in hdf5_names(f["model"])}
        optim = set(hdf5_names(f["optim"])) if "optim" in f else set()
        moments = {n: f["optim"][n][()] for n in optim}

    # Base linears are never written; every base tensor of another kind is in the checkpoint.
    written_base = [n for n in model if BASE_LINEAR.search(n) and "lora_" not in n]
    assert not written_base, f"base linears in the checkpoint: {written_base[:4]}"
    hf_other = {n for n in base if not BASE_LINEAR.search(n)}
    assert hf_other <= set(model), f"missing from /model: {sorted(hf_other - set(model))[:4]}"

    trainable = {n for n in model if "lora_A" in n or "lora_B" in n}
    assert any("experts" in n for n in trainable) and any("self_attn" in n for n in trainable)
    if router:
        trainable |= {n for n in model if ROUTER.search(n)}
        assert any(ROUTER.search(n) for n in trainable)
    want = {f"{n}/{m}" for n in trainable for m in ("exp_avg", "exp_avg_sq")}
    assert optim == want, (f"/optim: extra {sorted(optim - want)[:4]}, missing {sorted(want - optim)[:4]}")
    for n, v in moments.items():
        assert np.all(np.isfinite(v)) and np.abs(v).max() > 0, f"/optim/{n} is zero or not finite"

    # Frozen tensors bitwise as loaded; trained ones moved.
    for n in hf_other:
        same = np.array_equal(model[n].view(np.uint32), base[n].astype(np.float32).view(np.uint32))
        if n in trainable:
            assert not same, f"trained router {n} did not change"
        else:
            assert same, f"frozen {n} changed in training"
    assert all(np.abs(model[n]).max() > 0 for n in trainable if "lora_B" in n), "a lora_B stayed zero"
