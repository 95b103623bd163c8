# Owns the oracle pytest fixtures: thread limits, the venv check, and session-cached tiny HF checkpoints and token files.
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import numpy  # noqa: F401
    import safetensors  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import yaml  # noqa: F401
except ImportError as exc:  # a broken venv must fail loudly, never skip
    raise RuntimeError(f"oracle venv is incomplete ({exc}); run launch/setup.sh") from exc

import hf_tiny  # noqa: E402

torch.set_num_threads(2)

# Variants of the tiny models used by the oracles: (arch, make_hf_model kwargs).
VARIANTS = {
    "mixtral": ("mixtral", {}),
    "qwen3": ("qwen3_moe", {"norm_topk_prob": True}),
    "qwen3_nonorm": ("qwen3_moe", {"norm_topk_prob": False}),
    "mixtral_tied": ("mixtral", {"tie": True}),
    "qwen3_allmoe": ("qwen3_moe", {"norm_topk_prob": True, "mlp_only_layers": ()}),  # every layer MoE (LoRA)
}

SEQ_LEN = 16
# 30 full windows of 16 (+1 target token) and 5 spare tokens: n = floor((ntokens-1)/L) = 30.
NTOKENS = 30 * SEQ_LEN + 1 + 5


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory):
    cache = {}

    def get(variant):
        if variant not in cache:
            arch, kw = VARIANTS[variant]
            cache[variant] = hf_tiny.make_hf_model(arch, tmp_path_factory.mktemp(f"hf_{variant}"),
                                                   seed=len(cache) + 7, **kw)
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tokens.u32"
    toks = hf_tiny.write_tokens(path, NTOKENS, seed=3)
    return path, toks
