# Owns the oracle fixtures: tiny random HF Mixtral/Qwen3-MoE checkpoints, token files, YAML configs, moe-debug runs, comparisons.
"""Helpers shared by the oracle tests.

Everything here produces *inputs* (random HF checkpoints saved with
save_pretrained, random token files, YAML configs) or runs our binaries and
reads their outputs. Expected values never come from our binaries: they come
from transformers / torch (see ref_moe.py).
"""
import copy
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.numpy import load_file as np_load_file

VOCAB = 97
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- HF models

def _mixtral_config(num_layers=2, num_experts=4, top_k=2, init_range=0.15, tie=False, **extra):
    from transformers import MixtralConfig
    return MixtralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=num_experts,
        num_experts_per_tok=top_k, initializer_range=init_range, rms_norm_eps=1e-5,
        max_position_embeddings=256, tie_word_embeddings=tie, router_jitter_noise=0.0,
        **extra)


def _qwen3_config(num_layers=3, num_experts=6, top_k=2, init_range=0.15, norm_topk_prob=True,
                  mlp_only_layers=(1,), head_dim=16, tie=False, **extra):
    from transformers import Qwen3MoeConfig
    return Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=head_dim, num_experts=num_experts, num_experts_per_tok=top_k,
        norm_topk_prob=norm_topk_prob, mlp_only_layers=list(mlp_only_layers), decoder_sparse_step=1,
        initializer_range=init_range, rms_norm_eps=1e-6, max_position_embeddings=256,
        tie_word_embeddings=tie, **extra)


def make_hf_model(arch, out_dir, seed=0, **kw):
    """Build a tiny random fp32 model of `arch` ('mixtral' | 'qwen3_moe'), save it with
    save_pretrained into out_dir and return out_dir. Norm weights are perturbed away
    from 1 so that a missing norm weight would show up."""
    from transformers import MixtralForCausalLM, Qwen3MoeForCausalLM
    torch.manual_seed(seed)
    if arch == "mixtral":
        model = MixtralForCausalLM(_mixtral_config(**kw))
    elif arch == "qwen3_moe":
        model = Qwen3MoeForCausalLM(_qwen3_config(**kw))
    else:
        raise ValueError(arch)
    model = model.float()
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    return out_dir


def load_hf_model(hf_dir, dtype=torch.float64):
    """The real transformers model (eager attention, eager experts) in `dtype`."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager")
    model = model.to(dtype)
    model.train()  # dropout probabilities are 0 in these configs; jitter is 0
    return model


def split_fused(model, get):
    """{disk name: tensor} for every parameter of the HF model, where get(param) returns the
    tensor to split (param.data or param.grad). Experts: gate_up_proj [E,2I,H] -> w1 (gate, rows
    < I) / w3 (up), down_proj [E,H,I] -> w2; Mixtral's `mlp` is `block_sparse_moe` on disk."""
    arch = model.config.model_type
    out = {}
    for name, p in model.named_parameters():
        t = get(p)
        if t is None:
            t = torch.zeros_like(p)
        t = t.detach()
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            prefix = name[: name.index("mlp.experts.")]
            moe = "block_sparse_moe" if arch == "mixtral" else "mlp"
            n_e = t.shape[0]
            for e in range(n_e):
                base = f"{prefix}{moe}.experts.{e}."
                if name.endswith("gate_up_proj"):
                    inter = t.shape[1] // 2
                    g_name, u_name = ("w1", "w3") if arch == "mixtral" else ("gate_proj", "up_proj")
                    out[base + g_name + ".weight"] = t[e, :inter]
                    out[base + u_name + ".weight"] = t[e, inter:]
                else:
                    out[base + ("w2" if arch == "mixtral" else "down_proj") + ".weight"] = t[e]
        elif arch == "mixtral" and name.endswith("mlp.gate.weight"):
            out[name.replace("mlp.gate.weight", "block_sparse_moe.gate.weight")] = t
        else:
            out[name] = t
    return out


def disk_tensors(hf_dir):
    """The tensors as save_pretrained wrote them (float64)."""
    sd = np_load_file(str(Path(hf_dir) / "model.safetensors"))
    return {k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()}


# ---------------------------------------------------------------- data, configs

def write_tokens(path, ntokens, seed=0, vocab=VOCAB):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, size=ntokens, dtype=np.uint32)
    toks.astype("<u4").tofile(str(path))
    return toks


BASE_CONFIG = {
    "run": {"name": "oracle"},
    "model": {},
    "moe": {
        "capacity_factor": 0.0, "drop_policy": "probs", "aux_loss_coef": 0.0,
        "aux_loss_scope": "micro", "aux_loss_form": "layer", "z_loss_coef": 0.0,
        "router_jitter": 0.0, "router_temperature": 1.0, "expert_dropout": 0.0,
        "bias_update_rate": 0.0,
    },
    "train": {
        "device": "cpu", "precision": "fp32", "seq_len": 16, "micro_batch": 2, "grad_accum": 1,
        "steps": 1, "lr": 1e-3, "min_lr": 0.0, "warmup_steps": 0, "schedule": "cosine",
        "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "grad_clip": 0.0,
        "seed": 1234,
    },
    "data": {"format": "tokens", "shuffle": False},
    "log": {"every": 1},
}


def _merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def make_config(hf_dir, data_path, run_dir, **sections):
    """Nested config dict (every key the oracles depend on written explicitly, so no C++
    default matters); sections are partial dicts, e.g. moe={'capacity_factor': 1.0}."""
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["model"]["init_from"] = str(hf_dir)
    cfg["data"]["path"] = str(data_path)
    cfg["run"]["dir"] = str(run_dir)
    _merge(cfg, sections)
    return cfg


def write_config(cfg, path):
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Path(path)


# ---------------------------------------------------------------- our binaries

def build_dir():
    return Path(os.environ.get("MOE_BUILD_DIR", REPO_ROOT / "build"))


def moe_debug_path():
    return build_dir() / "tests" / "moe-debug"


def run_moe_debug(mode, cfg, workdir, sets=(), timeout=300, resume=None):
    """Write cfg as YAML, run `moe-debug MODE CONFIG [--resume CKPT] --out OUT` and return
    ({name: float64 torch tensor}, run_dir). Fails (never skips) when the binary is missing."""
    import pytest
    exe = moe_debug_path()
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first (cmake --build build) "
                    f"or point MOE_BUILD_DIR at the build directory")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = write_config(cfg, workdir / f"{mode}.yaml")
    out = workdir / f"{mode}_out.safetensors"
    cmd = [str(exe), mode, str(cfg_path)]
    for s in sets:
        cmd += ["--set", s]
    if resume is not None:
        cmd += ["--resume", str(resume)]
    cmd += ["--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}\nstdout:\n{res.stdout[-4000:]}\n"
                    f"stderr:\n{res.stderr[-4000:]}")
    sd = np_load_file(str(out))
    return {k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()}, Path(cfg["run"]["dir"])


def run_moe_train(cfg, workdir, timeout=300):
    """Run the product binary `moe-train CONFIG` and return its run dir. Fails when missing."""
    import pytest
    exe = build_dir() / "moe-train"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first (cmake --build build)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = write_config(cfg, workdir / "train.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    res = subprocess.run([str(exe), str(cfg_path)], capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        pytest.fail(f"moe-train {cfg_path} exited {res.returncode}\nstdout:\n{res.stdout[-4000:]}\n"
                    f"stderr:\n{res.stderr[-4000:]}")
    return Path(cfg["run"]["dir"])


def read_metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- comparisons

def rel_err(got, want):
    """max|got - want| / max|want| (absolute error when want is all zeros)."""
    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got - want).abs().max().item() if want.numel() else 0.0
    scale = want.abs().max().item() if want.numel() else 0.0
    return diff / scale if scale > 0 else diff


def check_close(name, got, want, rtol, atol_rel=None, report=None):
    """Assert max|got-want|/max|want| <= rtol and elementwise
    |got-want| <= rtol*|want| + atol_rel*max|want| (atol_rel defaults to rtol)."""
    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    err = rel_err(got, want)
    if report is not None:
        report[name] = err
    assert err <= rtol, f"{name}: max|a-b|/max|b| = {err:.3e} > {rtol:.1e}"
    scale = want.abs().max().item() if want.numel() else 0.0
    atol = (rtol if atol_rel is None else atol_rel) * (scale if scale > 0 else 1.0)
    bad = ~torch.isclose(got, want, rtol=rtol, atol=atol)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(f"{name}: {int(bad.sum())} elements outside rtol={rtol:.1e} atol={atol:.1e}; "
                             f"first at {i}: got {got[tuple(i)].item():.9g} want {want[tuple(i)].item():.9g}")
    return err


def print_report(title, report):
    worst = max(report.items(), key=lambda kv: kv[1]) if report else ("-", 0.0)
    scalars = ", ".join(f"{k.split('.', 1)[-1] if '.' in k else k} {v:.1e}"
                        for k, v in report.items() if "grad." not in k)
    print(f"\n[{title}] {len(report)} tensors, worst max|a-b|/max|b| = {worst[1]:.2e} ({worst[0]}); {scalars}")
