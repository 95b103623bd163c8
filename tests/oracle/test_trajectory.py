# Owns the 10-step training oracles against ref_moe.py: metrics.jsonl per step and final weights ([C5.order] [C5.adamw] [C5.clip] [C5.lr]).
import pytest

import hf_tiny
import ref_moe
from conftest import SEQ_LEN
from hf_tiny import check_close, print_report, rel_err

STEPS = 10
# fp32 trainer vs float64 reference. Step 1 is one forward/backward; later steps carry fp32
# drift through AdamW, so they and the final weights get a looser bound.
RTOL_FIRST = 2e-5
RTOL_STEPS = 1e-4
RTOL_WEIGHTS = 1e-4

CASES = [
    ("mixtral", "mixtral", {}),
    ("qwen3", "qwen3", {}),
    ("mixtral-global", "mixtral", {"aux_loss_scope": "global"}),
]


def trajectory_config(d, path, run_dir, moe):
    return hf_tiny.make_config(
        d, path, run_dir,
        moe={"capacity_factor": 1.25, "drop_policy": "probs", "aux_loss_coef": 0.01, "z_loss_coef": 0.001,
             **moe},
        train={"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 2, "steps": STEPS, "lr": 3e-3,
               "min_lr": 3e-4, "warmup_steps": 3, "schedule": "cosine", "weight_decay": 0.1,
               "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "grad_clip": 1.0},
        log={"every": 1})


def test_C5_lr_schedule_formula():
    """[C5.lr] the reference's schedule, spelled out for steps=10, warmup=3."""
    import math
    t = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 3, "steps": 10, "schedule": "cosine"}
    got = [ref_moe.lr_at(s, t) for s in range(10)]
    want = [1 / 3, 2 / 3, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * i / 7)) for i in range(7)]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-15
    t["schedule"] = "constant"
    assert [ref_moe.lr_at(s, t) for s in range(5)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("case,variant,moe", CASES, ids=[c[0] for c in CASES])
def test_C5_trajectory_vs_reference(case, variant, moe, hf_model_dir, token_file, tmp_path):
    """[C5.order][C5.adamw][C5.clip][C5.lr][C4.objective] 10 steps of moe-debug train ==
    ref_moe.py: loss, aux_loss, z_loss, lr, grad_norm, tokens, expert_load, dropped_frac per
    step (metrics.jsonl) and every final weight."""
    path, toks = token_file
    d = hf_model_dir(variant)
    cfg = trajectory_config(d, path, tmp_path / "run", moe)
    ref = ref_moe.RefModel(d, cfg)
    want = ref.train(toks)
    # the case must exercise dropping and clipping, and the data must wrap around (40 > 30 windows)
    assert any(m["dropped_frac"] > 0 for m in want)
    assert any(m["grad_norm"] > 1.0 for m in want)
    assert STEPS * 4 > ref_moe.num_windows(len(toks), SEQ_LEN)

    ours_w, run_dir = hf_tiny.run_moe_debug("train", cfg, tmp_path)
    worst = check_metrics(hf_tiny.read_metrics(run_dir), want)
    print(f"\n[trajectory {case}] worst per-step relative error: "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))

    final = ref.params()
    rep = {}
    assert set(ours_w) >= set(final), f"final weights missing: {sorted(set(final) - set(ours_w))[:6]}"
    for k, w in final.items():
        check_close(k, ours_w[k], w, RTOL_WEIGHTS, report=rep)
    print_report(f"final weights {case}", rep)


def test_C5_moe_train_metrics_vs_reference(hf_model_dir, token_file, tmp_path):
    """The product binary: `moe-train CONFIG` writes the same metrics.jsonl trajectory."""
    path, toks = token_file
    d = hf_model_dir("qwen3")
    cfg = trajectory_config(d, path, tmp_path / "run", {})
    want = ref_moe.RefModel(d, cfg).train(toks)
    run_dir = hf_tiny.run_moe_train(cfg, tmp_path)
    worst = check_metrics(hf_tiny.read_metrics(run_dir), want)
    print(f"\n[moe-train trajectory qwen3] worst per-step relative error: "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))


REQUIRED = ("step", "loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens", "tok_per_s", "step_time_s",
            "expert_utilization", "load_imbalance", "routing_entropy", "dropped_frac", "expert_load")


def check_metrics(got, want):
    """Compare metrics.jsonl lines with the reference's per-step metrics; returns worst errors."""
    assert [m.get("step") for m in got] == list(range(1, STEPS + 1)), [m.get("step") for m in got]
    worst = {}
    for g, w in zip(got, want):
        s = w["step"]
        diag = f"step {s} (reference's smallest routing/capacity margin {w['margin']:.2e})"
        missing = [k for k in REQUIRED if k not in g]
        assert not missing, f"step {s}: metrics.jsonl lacks {missing}"
        assert g["tokens"] == w["tokens"], f"{diag}: tokens {g['tokens']} != {w['tokens']}"
        assert g["expert_load"] == w["expert_load"], f"{diag}: expert_load {g['expert_load']} != {w['expert_load']}"
        assert abs(g["dropped_frac"] - w["dropped_frac"]) < 1e-6, \
            f"{diag}: dropped_frac {g['dropped_frac']} != {w['dropped_frac']}"
        assert abs(g["lr"] - w["lr"]) <= 1e-7 * w["lr"], f"{diag}: lr {g['lr']} != {w['lr']}"
        tol = RTOL_FIRST if s == 1 else RTOL_STEPS
        for key in ("loss", "aux_loss", "z_loss", "grad_norm"):
            err = rel_err(g[key], w[key])
            worst[key] = max(worst.get(key, 0.0), err)
            assert err <= tol, f"{diag}: {key} {g[key]!r} vs reference {w[key]!r} (rel {err:.2e} > {tol:.0e})"
        for key, val in ref_moe.router_health(w["expert_load"]).items():
            assert abs(g[key] - val) <= 1e-9 * max(1.0, abs(val)), f"{diag}: {key} {g[key]!r} != {val!r}"
    return worst
