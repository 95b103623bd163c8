# Owns the log.tensorboard oracle: the real tensorboard package reads back every metric of metrics.jsonl (scalars and
# per-layer expert-load histograms) from a run that was resumed from an earlier checkpoint.
"""log.tensorboard against the real tensorboard reader.

A 6-step run (checkpoints at steps 4 and 6, per-layer fields every 2 steps, a held-out eval at step 3 and 6) is
resumed from its step-4 checkpoint and run to step 6 again. metrics.jsonl then holds steps 1..4 of the first run and
5..6 of the second; run.dir/tb holds both runs' event files, the second starting with a SessionLog START at step 5.
TensorBoard's EventAccumulator must give, for every numeric field of every metrics line, the same value as float32
at the same step (so the first run's steps 5..6 — whose step_time_s differs — were purged), and for every
expert_load row a histogram whose buckets are that row.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import hf_tiny

TINY = """
run: {{dir: {run}}}
model: {{arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4,
        num_kv_heads: 2, num_experts: 4, top_k: 2}}
moe: {{capacity_factor: 1.25, aux_loss_coef: 0.01, z_loss_coef: 0.001}}
train: {{seq_len: 16, micro_batch: 4, grad_accum: 1, steps: 6, lr: 0.01}}
checkpoint: {{every: 4, keep: 5}}
log: {{every: 2, tensorboard: true}}
eval: {{data: {tokens}, every: 3, batches: 1}}
data: {{format: tokens, path: {tokens}}}
"""


def _run(cfg, *args):
    exe = hf_tiny.build_dir() / "moe-train"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first")
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    res = subprocess.run([str(exe), str(cfg), *args], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, f"moe-train {args} exited {res.returncode}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("tb_metrics")
    tokens = work / "tokens.bin"
    hf_tiny.write_tokens(tokens, 8192, seed=7, vocab=64)
    run = work / "run"
    cfg = work / "tiny.yaml"
    cfg.write_text(TINY.format(run=run, tokens=tokens))
    _run(cfg)
    # Back to step 4 as if the run had died after it: the step-6 checkpoint goes (run.overwrite), steps 5-6 rerun.
    res = _run(cfg, "--resume", str(run / "checkpoints" / "step_4.h5"), "--set", "run.overwrite=true")
    assert "resumed from" in res.stdout + res.stderr
    return run


def _accumulator(run_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(str(run_dir / "tb"), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def test_two_event_files_second_starts_at_5(run_dir):
    files = sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 2, files
    from tensorboard.backend.event_processing import event_file_loader
    events = list(event_file_loader.EventFileLoader(str(files[1])).Load())
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
    assert starts == [5], starts


def test_every_metric_reads_back(run_dir):
    lines = hf_tiny.read_metrics(run_dir)
    assert [l["step"] for l in lines] == [1, 2, 3, 4, 5, 6]
    acc = _accumulator(run_dir)
    tags = set(acc.Tags()["scalars"])

    def scalar(tag):
        assert tag in tags, f"{tag} missing from TensorBoard (have {sorted(tags)[:20]}...)"
        return {e.step: e.value for e in acc.Scalars(tag)}

    checked = 0
    for line in lines:
        step = line["step"]
        for key, val in line.items():
            if key == "step" or isinstance(val, (list, dict)) or val is None or isinstance(val, bool):
                continue
            tag = "eval/" + key[5:] if key.startswith("eval_") else "train/" + key
            got = scalar(tag)
            assert step in got, f"{tag} has no step {step}"
            assert got[step] == np.float32(val), f"{tag} step {step}: {got[step]} != float32({val})"
            checked += 1
        for layer in line.get("router_layers", []):
            for key, val in layer.items():
                if key == "layer" or val is None:
                    continue
                got = scalar(f"router/layer{layer['layer']}/{key}")
                assert got[step] == np.float32(val), (key, step)
                checked += 1
    # every logged scalar step is a metrics.jsonl step: nothing of the first run's lost steps survived
    for tag in ("train/loss", "train/step_time_s"):
        assert sorted(scalar(tag)) == [1, 2, 3, 4, 5, 6], tag
    assert checked > 120, checked  # ~18 top-level fields x 6 lines + 8 per layer x 2 layers x 3 lines


def test_expert_load_histograms(run_dir):
    lines = hf_tiny.read_metrics(run_dir)
    acc = _accumulator(run_dir)
    n = 0
    for prefix, key in (("expert_load/", "expert_load"), ("eval/expert_load/", "eval_expert_load")):
        for line in lines:
            if key not in line:
                continue
            for i, row in enumerate(line[key]):
                layer = line["router_layers"][i]["layer"] if "router_layers" in line else i
                hist = {e.step: e.histogram_value for e in acc.Histograms(f"{prefix}layer{layer}")}
                h = hist[line["step"]]
                assert h.num == sum(row)
                # bucket e = (e - 0.5, e + 0.5] holds row[e] (TensorBoard keeps the buckets as written)
                weights = dict(zip(h.bucket_limit, h.bucket))
                for e, c in enumerate(row):
                    assert weights.get(e + 0.5, 0.0) == c, (key, line["step"], e)
                n += 1
    assert n == 2 * 3 + 2 * 1, n  # train rows at steps 2, 4, 6; eval rows at step 6 (step 3 is off log.every)
