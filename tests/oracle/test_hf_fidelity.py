# Owns the HF-fidelity oracles: config.json read as transformers 5.x reads it (RoPE class default, sliding window, tied lm_head, pad_token_id), export metadata, bad weights.
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load_file
from safetensors.torch import load_file as torch_load_file
from safetensors.torch import save_file as torch_save_file

import hf_tiny
from conftest import SEQ_LEN
from hf_tiny import check_close, print_report
from test_hf_forward import batch, hf_reference
from test_upcycle import make_dense

# fp32 trainer vs float64 transformers (as test_hf_forward.py).
RTOL = 1e-5


def run_debug(cfg, workdir):
    """moe-debug grads CFG → ({name: float64 tensor}, stdout+stderr); fails on a non-zero exit."""
    exe = hf_tiny.moe_debug_path()
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = hf_tiny.write_config(cfg, workdir / "grads.yaml")
    out = workdir / "grads_out.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    res = subprocess.run([str(exe), "grads", str(cfg_path), "--out", str(out)], capture_output=True, text=True,
                         timeout=300, env=env)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    sd = np_load_file(str(out))
    return {k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()}, log


def run_train(cfg, workdir):
    """moe-train CFG → (exit code, stdout+stderr)."""
    exe = hf_tiny.build_dir() / "moe-train"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = hf_tiny.write_config(cfg, workdir / "train.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    res = subprocess.run([str(exe), str(cfg_path)], capture_output=True, text=True, timeout=300, env=env)
    return res.returncode, res.stdout + res.stderr


def compare_with_hf(name, d, token_file, tmp_path):
    """moe-debug grads (one micro-batch of 2 windows of SEQ_LEN) == transformers in float64: logits, loss and
    every parameter gradient. Returns (our log, the HF model)."""
    path, toks = token_file
    cfg = hf_tiny.make_config(d, path, tmp_path / name / "run",
                              train={"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 1})
    inputs, targets = batch(cfg, toks)
    logits, ce, _, grads, model = hf_reference(d, inputs, targets)
    ours, log = run_debug(cfg, tmp_path / name)
    rep = {}
    check_close(f"{name}.logits", ours["logits"], logits, RTOL, report=rep)
    check_close(f"{name}.loss", ours["loss"].reshape(()), ce, RTOL, report=rep)
    assert sorted(k[len("grad."):] for k in ours if k.startswith("grad.")) == sorted(grads)
    for k, g in grads.items():
        check_close(f"{name}.grad.{k}", ours["grad." + k], g, RTOL, report=rep)
    print_report(f"moe-debug vs HF {name}", rep)
    return log, model


def edit_config(d, **changes):
    """Rewrite d/config.json: key=None removes the key."""
    p = Path(d) / "config.json"
    c = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    p.write_text(json.dumps(c, indent=2))


def test_qwen3_without_rope_theta_uses_class_default(token_file, tmp_path):
    """A Qwen3-MoE config.json with neither rope_theta nor rope_parameters: transformers uses the class default
    θ = 1e4 (Mixtral's class default is 1e6); so must we."""
    d = hf_tiny.make_hf_model("qwen3_moe", tmp_path / "hf", seed=21, rope_parameters={"rope_type": "default",
                                                                                       "rope_theta": 1e6})
    edit_config(d, rope_theta=None, rope_parameters=None, rope_scaling=None)
    _, model = compare_with_hf("qwen3_no_theta", d, token_file, tmp_path)
    assert model.config.rope_parameters["rope_theta"] == 10000.0


@pytest.mark.parametrize("arch,kw", [("mixtral", {"sliding_window": 4}),
                                     ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 4})],
                         ids=["mixtral", "qwen3"])
def test_sliding_window_matches_hf(arch, kw, token_file, tmp_path):
    """sliding_window 4 at seq 16: each token sees itself and the 3 before it, as transformers masks; logits,
    loss and every gradient equal transformers'."""
    d = hf_tiny.make_hf_model(arch, tmp_path / "hf", seed=22, **kw)
    _, model = compare_with_hf(f"{arch}_window4", d, token_file, tmp_path)
    assert model.config.sliding_window == 4


def test_tied_config_with_differing_lm_head(token_file, tmp_path):
    """tie_word_embeddings true but the file also holds a different lm_head.weight: transformers does not tie
    them; we do the same, warn naming the tensor, and compute transformers' loss and gradients."""
    d = hf_tiny.make_hf_model("mixtral", tmp_path / "hf", seed=23, tie=True)
    f = Path(d) / "model.safetensors"
    sd = torch_load_file(str(f))
    assert "lm_head.weight" not in sd
    g = torch.Generator().manual_seed(5)
    sd["lm_head.weight"] = 0.15 * torch.randn(sd["model.embed_tokens.weight"].shape, generator=g)
    torch_save_file(sd, str(f), metadata={"format": "pt"})
    log, model = compare_with_hf("mixtral_tied_lm_head", d, token_file, tmp_path)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert "lm_head.weight differs from model.embed_tokens.weight" in log, log[-3000:]


def test_pad_token_row_gets_no_embedding_gradient(token_file, tmp_path):
    """pad_token_id is nn.Embedding's padding_idx in transformers: that row gets no gradient from the lookup."""
    _, toks = token_file
    pad = int(toks[3])  # a token of the first window
    d = hf_tiny.make_hf_model("mixtral", tmp_path / "hf", seed=24, pad_token_id=pad)
    _, model = compare_with_hf("mixtral_pad", d, token_file, tmp_path)
    assert model.model.embed_tokens.padding_idx == pad


def greedy(model_dir, prompt, n, eos_off=False):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    if eos_off:
        model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist(), model


def test_export_keeps_source_metadata_and_generate_stops_on_eos(token_file, tmp_path):
    """A model loaded from an HF dir with its own bos/eos/pad/max_position_embeddings, generation_config.json and
    tokenizer files: moe-export keeps them (and the trained router_aux_loss_coef, dtype in both spellings), and
    transformers' generate() on the export stops on the source's eos."""
    data_path, toks = token_file
    d = hf_tiny.make_hf_model("mixtral", tmp_path / "hf", seed=25)
    prompt = torch.from_numpy(toks[:6].astype(np.int64)).reshape(1, -1)
    free, _ = greedy(d, prompt, 12, eos_off=True)
    # eos: the second new token of the free-running continuation (the first when it repeats one token), never the
    # class defaults 1 / 2.
    fresh = [i for i in range(len(free)) if free[i] not in free[:i] and free[i] not in (1, 2)]
    pos = fresh[1] if len(fresh) > 1 else fresh[0]
    eos = free[pos]
    print(f"free continuation {free}; eos {eos} at {pos}")
    edit_config(d, bos_token_id=3, eos_token_id=eos, pad_token_id=0, max_position_embeddings=777)
    src_cfg = json.loads((Path(d) / "config.json").read_text())
    assert src_cfg["rope_parameters"]["rope_type"] == "default"
    (Path(d) / "generation_config.json").write_text(json.dumps({"bos_token_id": 3, "eos_token_id": eos,
                                                                "pad_token_id": 0}))
    side = {"tokenizer.json": '{"model": "dummy"}', "tokenizer_config.json": '{"model_max_length": 777}',
            "special_tokens_map.json": '{"eos_token": "</s>"}', "chat_template.jinja": "{{ messages }}"}
    for name, text in side.items():
        (Path(d) / name).write_text(text)

    run_dir = tmp_path / "run"
    cfg = hf_tiny.make_config(d, data_path, run_dir, train={"steps": 1, "lr": 1e-12},
                              moe={"aux_loss_form": "hf", "aux_loss_coef": 0.02})
    hf_tiny.run_moe_train(cfg, tmp_path)
    exe = hf_tiny.build_dir() / "moe-export"
    out = tmp_path / "export"
    res = subprocess.run([str(exe), str(run_dir / "checkpoints" / "step_1.h5"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    c = json.loads((out / "config.json").read_text())
    assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (3, eos, 0), c
    assert c["max_position_embeddings"] == 777
    assert c["rope_parameters"] == src_cfg["rope_parameters"]
    assert c["router_aux_loss_coef"] == 0.02
    assert c["dtype"] == "float32" and c["torch_dtype"] == "float32"
    assert c["sliding_window"] is None
    for name in ["generation_config.json", *side]:
        assert (out / name).read_bytes() == (Path(d) / name).read_bytes(), name

    got, model = greedy(out, prompt, 12)
    assert model.generation_config.eos_token_id == eos
    assert got == free[:pos + 1], f"generate() gave {got}; expected to stop on eos {eos} after {free[:pos + 1]}"


def nan_in_embedding(d, value):
    """Put `value` into row VOCAB-1 (a token the random data may never use) of d's embedding."""
    f = Path(d) / "model.safetensors"
    sd = torch_load_file(str(f))
    sd["model.embed_tokens.weight"][hf_tiny.VOCAB - 1, 5] = value
    torch_save_file(sd, str(f), metadata={"format": "pt"})


def test_nan_in_init_from_weights_exits_2(token_file, tmp_path):
    """model.init_from whose embedding holds a NaN: exit 2 naming the tensor (before any training)."""
    data_path, _ = token_file
    d = hf_tiny.make_hf_model("mixtral", tmp_path / "hf", seed=26)
    nan_in_embedding(d, float("nan"))
    rc, log = run_train(hf_tiny.make_config(d, data_path, tmp_path / "run"), tmp_path / "w")
    assert rc == 2 and "model.embed_tokens.weight" in log and "non-finite" in log, log[-3000:]
    # Nothing trained or saved (the run's directories are claimed, and locked, before the weights load).
    assert not list((tmp_path / "run").glob("checkpoints/step_*.h5"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_inf_in_upcycle_from_weights_exits_2(token_file, tmp_path):
    """upcycle.from whose embedding holds an Inf: exit 2 naming the tensor."""
    data_path, _ = token_file
    dense = make_dense("llama", tmp_path / "dense", seed=27)
    nan_in_embedding(dense, float("inf"))
    cfg = hf_tiny.make_config(dense, data_path, tmp_path / "run")
    del cfg["model"]["init_from"]
    cfg["upcycle"] = {"from": str(dense), "num_experts": 4, "top_k": 2}
    rc, log = run_train(cfg, tmp_path / "w")
    assert rc == 2 and "model.embed_tokens.weight" in log and "upcycle.from" in log, log[-3000:]


@pytest.mark.parametrize("key,value", [("attention_dropout", 0.1), ("router_jitter_noise", 0.01),
                                       ("is_causal", False)])
def test_unimplemented_math_key_exits_2(key, value, token_file, tmp_path):
    """config.json asking for math moe-train does not implement: exit 2 naming the key."""
    data_path, _ = token_file
    d = hf_tiny.make_hf_model("mixtral", tmp_path / "hf", seed=28)
    edit_config(d, **{key: value})
    rc, log = run_train(hf_tiny.make_config(d, data_path, tmp_path / "run"), tmp_path / "w")
    assert rc == 2 and key in log, log[-3000:]
