# Owns the upcycling oracle: dense Llama/Qwen3 (save_pretrained) → moe-upcycle-dump → transformers' Mixtral/Qwen3-MoE gives the dense logits.
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load_file

import hf_tiny

VOCAB = hf_tiny.VOCAB
RTOL_FP32 = 1e-5
# In fp64 the only rounding left is HF's router softmax, which transformers always takes in fp32
# (routing weights sum to 1 within ~1e-7), so fp64 is not tighter than ~1e-6.
RTOL_FP64 = 2e-6


def make_dense(kind, out_dir, seed=0, tie=False, num_layers=3):
    """Tiny random fp32 dense model ('llama' | 'qwen3') saved with save_pretrained. Weights are
    drawn wider than the default init (0.15) and norms perturbed away from 1, so that a wrong or
    missing tensor shows in the logits."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.15,
                  max_position_embeddings=256, tie_word_embeddings=tie)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(rms_norm_eps=1e-5, rope_theta=5e5, **common))
    elif kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(rms_norm_eps=1e-6, head_dim=16, **common))
    else:
        raise ValueError(kind)
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


def upcycle_exe():
    return hf_tiny.build_dir() / "tests" / "moe-upcycle-dump"


def run_upcycle(dense, out, *args, expect_rc=0):
    exe = upcycle_exe()
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first (cmake --build build --target moe-upcycle-dump) "
                    f"or point MOE_BUILD_DIR at the build directory")
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    cmd = [str(exe), "--from", str(dense), "--out", str(out), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == expect_rc, (f"{' '.join(cmd)} exited {res.returncode} (want {expect_rc})\n"
                                         f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}")
    return res


def load(model_dir, dtype, moe):
    from transformers import AutoModelForCausalLM
    kw = {"experts_implementation": "eager"} if moe else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager", **kw)
    model = model.to(dtype)
    model.eval()
    return model


def logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs).logits


def inputs_for(seed=5, batch=2, seq=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


EXPECTED_CLASS = {"llama": "MixtralForCausalLM", "qwen3": "Qwen3MoeForCausalLM"}
EXPERT_NAMES = {"llama": ("block_sparse_moe", "w1", "w3", "w2"), "qwen3": ("mlp", "gate_proj", "up_proj", "down_proj")}

CASES = {  # id: (dense kind, tie_word_embeddings, num_experts, top_k)
    "llama_e4k2": ("llama", False, 4, 2),
    "llama_e3k1": ("llama", False, 3, 1),
    "qwen3_e4k2": ("qwen3", False, 4, 2),
    "qwen3_tied_e8k3": ("qwen3", True, 8, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_upcycled_logits_equal_dense(case, tmp_path):
    kind, tie, n_exp, top_k = CASES[case]
    dense = make_dense(kind, tmp_path / "dense", seed=len(case), tie=tie)
    moe = tmp_path / "moe"
    run_upcycle(dense, moe, "--num-experts", n_exp, "--top-k", top_k, "--noise", 0, "--depth-pct", 0,
                "--seed", 42, "--init-std", 0.5)  # a wide router: tokens really spread over experts

    cfg = json.loads((moe / "config.json").read_text())
    assert cfg["architectures"] == [EXPECTED_CLASS[kind]]
    assert cfg["num_experts_per_tok"] == top_k
    assert cfg.get("num_local_experts", cfg.get("num_experts")) == n_exp
    if kind == "qwen3":
        assert cfg["moe_intermediate_size"] == 48 and cfg["norm_topk_prob"] is True
        assert cfg["mlp_only_layers"] == [] and cfg["decoder_sparse_step"] == 1

    # Saved experts are exact copies of the dense MLP; everything else is copied; routers are fresh.
    d, m = np_load_file(str(dense / "model.safetensors")), np_load_file(str(moe / "model.safetensors"))
    blk, g_name, u_name, d_name = EXPERT_NAMES[kind]
    for l in range(3):
        p = f"model.layers.{l}."
        for e in range(n_exp):
            for src, dst in (("gate_proj", g_name), ("up_proj", u_name), ("down_proj", d_name)):
                assert np.array_equal(m[f"{p}{blk}.experts.{e}.{dst}.weight"], d[f"{p}mlp.{src}.weight"]), (l, e, dst)
        router = m[f"{p}{blk}.gate.weight"]
        assert router.shape == (n_exp, 32) and 0.3 < router.std() < 0.7
    shared = [k for k in d if ".mlp." not in k]
    assert all(np.array_equal(m[k], d[k]) for k in shared)
    assert ("lm_head.weight" in m) == (not tie)

    dense_model, moe_model = load(dense, torch.float32, False), load(moe, torch.float32, True)
    assert type(moe_model).__name__ == EXPECTED_CLASS[kind]
    x = inputs_for()
    want = logits(dense_model, x)
    err32 = rel(logits(moe_model, x), want)
    # fp64: the identity is exact in math; what remains is the fp32 router softmax (see RTOL_FP64).
    err64 = rel(logits(moe_model.double(), x), logits(dense_model.double(), x))
    print(f"\n[{case}] upcycled vs dense logits: fp32 max rel {err32:.2e}, fp64 {err64:.2e}")
    assert err32 <= RTOL_FP32
    assert err64 <= RTOL_FP64

    # The router is live: its top-k choices differ between tokens (so equality is not a single-expert accident).
    with torch.no_grad():
        h = moe_model.model.embed_tokens(x).double()
        r = moe_model.model.layers[0].mlp.gate.weight  # v5 names Mixtral's block `mlp` too
        choices = {tuple(sorted(t.tolist())) for t in torch.topk(h.reshape(-1, 32) @ r.double().T, top_k).indices}
    assert len(choices) > 1 or n_exp == top_k


def test_noise_and_depth(tmp_path):
    dense = make_dense("qwen3", tmp_path / "dense", seed=3, num_layers=4)
    d = np_load_file(str(dense / "model.safetensors"))

    # Noise: experts = dense + noise·std(W)·N(0,1), deterministic for a seed; logits move a little.
    a, b = tmp_path / "a", tmp_path / "b"
    run_upcycle(dense, a, "--num-experts", 4, "--top-k", 2, "--noise", 0.01, "--seed", 7)
    run_upcycle(dense, b, "--num-experts", 4, "--top-k", 2, "--noise", 0.01, "--seed", 7)
    ma, mb = np_load_file(str(a / "model.safetensors")), np_load_file(str(b / "model.safetensors"))
    assert ma.keys() == mb.keys() and all(np.array_equal(ma[k], mb[k]) for k in ma)
    w = d["model.layers.2.mlp.up_proj.weight"].astype(np.float64)
    for e in range(4):
        got = ma[f"model.layers.2.mlp.experts.{e}.up_proj.weight"].astype(np.float64)
        ratio = (got - w).std() / w.std()
        assert 0.008 < ratio < 0.012, (e, ratio)
    x = inputs_for()
    want = logits(load(dense, torch.float64, False), x)
    err = rel(logits(load(a, torch.float64, True), x), want)
    assert 1e-6 < err < 0.2, err

    # Depth up-scaling 50%: 4 → 6 layers [0, 1, 1, 2, 2, 3], duplicates are exact copies; transformers loads it.
    c = tmp_path / "c"
    run_upcycle(dense, c, "--num-experts", 2, "--top-k", 1, "--depth-pct", 50)
    cfg = json.loads((c / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6
    mc = np_load_file(str(c / "model.safetensors"))
    for new, src in enumerate([0, 1, 1, 2, 2, 3]):
        for t in ("self_attn.q_proj", "self_attn.k_norm", "input_layernorm", "post_attention_layernorm"):
            assert np.array_equal(mc[f"model.layers.{new}.{t}.weight"], d[f"model.layers.{src}.{t}.weight"])
        for e in range(2):
            assert np.array_equal(mc[f"model.layers.{new}.mlp.experts.{e}.down_proj.weight"],
                                  d[f"model.layers.{src}.mlp.down_proj.weight"])
    deep = load(c, torch.float64, True)
    assert len(deep.model.layers) == 6
    assert torch.isfinite(logits(deep, x)).all()


def test_bad_dense_model_exits_2(tmp_path):
    dense = make_dense("llama", tmp_path / "dense", seed=1, num_layers=1)
    bad = tmp_path / "bad"
    shutil.copytree(dense, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (bad / "config.json").write_text(json.dumps(cfg))
    res = run_upcycle(bad, tmp_path / "out", expect_rc=2)
    assert "gpt_neox" in res.stderr and "llama" in res.stderr and "qwen3" in res.stderr

    cfg["model_type"] = "llama"
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    (bad / "config.json").write_text(json.dumps(cfg))
    res = run_upcycle(bad, tmp_path / "out", expect_rc=2)
    assert "rope_type" in res.stderr
