# Owns the router-health warnings oracle: a synthetic router collapse (an HF model whose tokens all look alike) warns
# naming the layer and the remedy and, with train.stop_on_collapse, stops with exit 3; the healthy model does not.
"""Router-health warnings on real runs.

Collapse is made, not waited for: every row of the HF model's embedding is set to the same vector, so every token
reaches every router with the same hidden state (attention mixes identical values) and each layer sends all tokens
to the same top_k of num_experts experts. With 8 experts and top-2 that is utilization 2/8 = 0.25 and load
imbalance 8/2 = 4 in every layer, below the collapse floor 0.5 — numbers that follow from the construction, not
from our output. The untouched random model routes tokens apart and stays healthy.
"""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_tiny


def _train(cfg_dict, work, *sets):
    exe = hf_tiny.build_dir() / "moe-train"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first")
    cfg = hf_tiny.write_config(cfg_dict, Path(work) / "train.yaml")
    cmd = [str(exe), str(cfg)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    work = tmp_path_factory.mktemp("router_health")
    healthy = hf_tiny.make_hf_model("mixtral", work / "healthy", seed=3, num_experts=8, top_k=2)
    collapsed = hf_tiny.make_hf_model("mixtral", work / "collapsed", seed=3, num_experts=8, top_k=2)
    for f in collapsed.glob("*.safetensors"):
        sd = load_file(str(f))
        if "model.embed_tokens.weight" in sd:
            emb = sd["model.embed_tokens.weight"]
            sd["model.embed_tokens.weight"] = np.ascontiguousarray(np.broadcast_to(emb[:1], emb.shape))
            save_file(sd, str(f), metadata={"format": "pt"})
    tokens = work / "tokens.bin"
    hf_tiny.write_tokens(tokens, 16384, seed=5)
    return work, healthy, collapsed, tokens


def _cfg(work, hf_dir, tokens, name):
    return hf_tiny.make_config(hf_dir, tokens, Path(work) / name,
                               moe={"aux_loss_coef": 0.01},
                               train={"steps": 4, "lr": 1e-4, "micro_batch": 16},
                               log={"every": 1, "stability_warnings": True})


def test_collapse_warns_naming_layers_and_remedies(models):
    work, _, collapsed, tokens = models
    res = _train(_cfg(work, collapsed, tokens, "collapse"), work)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "router health degraded (collapse) in 2 of 2 MoE layers" in out, out[-3000:]
    assert "layer 0 expert_utilization 0.25, load_imbalance 4" in out, out[-3000:]
    assert "layer 1 expert_utilization 0.25" in out, out[-3000:]
    for remedy in ("raise moe.aux_loss_coef", "lower train.lr", "enable moe.router_jitter"):
        assert remedy in out, remedy
    # The per-layer metrics say the same: 2 of 8 experts, all tokens on them.
    for line in hf_tiny.read_metrics(Path(work) / "collapse"):
        for layer in line["router_layers"]:
            assert layer["expert_utilization"] == 0.25, line["step"]
            assert layer["load_imbalance"] == 4.0
            assert layer["routing_entropy"] == pytest.approx(np.log(2) / np.log(8), abs=1e-12)


def test_stop_on_collapse_exits_3(models):
    work, _, collapsed, tokens = models
    res = _train(_cfg(work, collapsed, tokens, "stop"), work, "train.stop_on_collapse=true")
    assert res.returncode == 3, (res.returncode, res.stderr[-3000:])
    out = res.stdout + res.stderr
    assert "router collapse at step 1 (train.stop_on_collapse): layer" in out, out[-3000:]
    assert "checkpoints already written are kept" in out


def test_stop_on_collapse_every_rank_exits_3(models):
    """Under mpirun (EP 2) the verdict is agreed: both ranks leave with exit 3, nobody is aborted."""
    import shutil
    work, _, collapsed, tokens = models
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.fail("mpirun not found (OpenMPI is a build dependency)")
    cfg = hf_tiny.write_config(_cfg(work, collapsed, tokens, "stop_mpi"), Path(work) / "stop_mpi.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [mpirun, "--oversubscribe", "--bind-to", "none", "-np", "2", str(hf_tiny.build_dir() / "moe-train"),
           str(cfg), "--set", "train.stop_on_collapse=true", "--set", "parallel.ep=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 3, (res.returncode, out[-3000:])
    assert out.count("router collapse at step 1 (train.stop_on_collapse)") == 1, out[-3000:]
    assert "MPI_ABORT" not in out, out[-3000:]


def test_healthy_model_does_not_warn(models):
    work, healthy, _, tokens = models
    res = _train(_cfg(work, healthy, tokens, "healthy"), work, "train.stop_on_collapse=true")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "router health degraded" not in out, out[-3000:]
    assert "router collapse" not in out
    for line in hf_tiny.read_metrics(Path(work) / "healthy"):
        for layer in line["router_layers"]:
            assert layer["expert_utilization"] >= 0.7 and layer["load_imbalance"] < 2.5, (line["step"], layer)
