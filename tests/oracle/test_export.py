# Owns the export oracle: checkpoint → moe-export (fp32, bf16, sharded) and checkpoint.export_hf → transformers loads it with our logits (DESIGN §6–7).
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file as np_load_file

import hf_tiny
import ref_moe
from conftest import SEQ_LEN

RTOL = 1e-5


def moe_export(ckpt, out, *args):
    exe = hf_tiny.build_dir() / "moe-export"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first")
    res = subprocess.run([str(exe), str(ckpt), "--out", str(out), *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(out)


def hf_logits(model_dir, inputs, dtype=torch.float64):
    model = hf_tiny.load_hf_model(model_dir, dtype)
    with torch.no_grad():
        return model(input_ids=inputs).logits


def all_tensors(d):
    d = Path(d)
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(np_load_file(str(f)))
    return out


@pytest.mark.parametrize("variant", ["mixtral", "qwen3"])
def test_export_logits_equal_ours(variant, hf_model_dir, token_file, tmp_path):
    data_path, toks = token_file
    run_dir = tmp_path / "run"
    cfg = hf_tiny.make_config(hf_model_dir(variant), data_path, run_dir,
                              train={"steps": 3, "micro_batch": 2, "grad_accum": 1, "lr": 0.01},
                              moe={"capacity_factor": 0.0},
                              checkpoint={"export_hf": True})
    hf_tiny.run_moe_train(cfg, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_3.h5"
    assert ckpt.exists()

    # Our logits from the checkpoint's weights (resume, then one forward on the step-0 windows).
    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / "dbg", sets=())

    exe = hf_tiny.moe_debug_path()
    cfg_path = hf_tiny.write_config(cfg, tmp_path / "resume.yaml")
    out = tmp_path / "resumed.safetensors"
    res = subprocess.run([str(exe), "grads", str(cfg_path), "--resume", str(ckpt), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    our_logits = torch.from_numpy(np_load_file(str(out))["logits"]).double()
    # The trained weights differ from the initial ones, so the resumed logits must too.
    assert (our_logits - ours["logits"]).abs().max() > 1e-4

    inputs, _ = ref_moe.global_batch(toks, SEQ_LEN, 2, 0)
    exported = moe_export(ckpt, tmp_path / "hf_fp32")
    got = hf_logits(exported, inputs)
    err = ((got - our_logits).abs().max() / our_logits.abs().max()).item()
    print(f"[{variant}] transformers(exported) vs ours from the checkpoint: max rel {err:.2e}")
    assert err <= RTOL

    # checkpoint.export_hf wrote the same tensors at the end of training.
    a, b = all_tensors(run_dir / "hf"), all_tensors(exported)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k

    # Sharded: several files + index, same tensors, loads in transformers.
    sharded = moe_export(ckpt, tmp_path / "hf_sharded", "--max-shard-size", "0.00002")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and not (sharded / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in b.values())
    c = all_tensors(sharded)
    assert c.keys() == b.keys() and all((c[k] == b[k]).all() for k in b)
    assert ((hf_logits(sharded, inputs) - got).abs().max() == 0).item()

    # bf16: every tensor is torch's round-to-nearest bf16 of the fp32 export, and transformers loads it.
    # (Logits are not compared: bf16 rounding flips top-k choices of this tiny random router.)
    bf = moe_export(ckpt, tmp_path / "hf_bf16", "--dtype", "bf16")
    assert json.loads((bf / "config.json").read_text())["torch_dtype"] == "bfloat16"
    from safetensors.torch import load_file as torch_load_file
    tb = {}
    for f in sorted(bf.glob("*.safetensors")):
        tb.update(torch_load_file(str(f)))
    assert tb.keys() == b.keys()
    for k, v in b.items():
        assert tb[k].dtype == torch.bfloat16
        assert torch.equal(tb[k], torch.from_numpy(v).to(torch.bfloat16)), k
    assert torch.isfinite(hf_logits(bf, inputs, torch.float32)).all()


def test_export_rejects_damaged_checkpoint(tmp_path):
    bad = tmp_path / "step_1.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    exe = hf_tiny.build_dir() / "moe-export"
    res = subprocess.run([str(exe), str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and "step_1.h5" in (res.stdout + res.stderr)
