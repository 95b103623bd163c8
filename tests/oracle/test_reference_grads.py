# Owns the step-0 oracles against ref_moe.py: capacity + drop policies, temperature, aux/z losses, grad accumulation ([C4.capacity] [C4.aux] [C4.zloss] [C4.objective]).
import pytest
import torch

import hf_tiny
import ref_moe
from conftest import SEQ_LEN
from hf_tiny import check_close, print_report

RTOL = 1e-5  # fp32 trainer vs float64 reference, relative to each tensor's max |value|

# (id, model variant, moe overrides)
CASES = [
    ("mixtral-probs", "mixtral", {"drop_policy": "probs"}),
    ("mixtral-position", "mixtral", {"drop_policy": "position"}),
    ("qwen3-probs", "qwen3", {"drop_policy": "probs"}),
    ("qwen3-position", "qwen3", {"drop_policy": "position"}),
    ("qwen3_nonorm-probs", "qwen3_nonorm", {"drop_policy": "probs"}),
    ("mixtral-probs-global", "mixtral", {"drop_policy": "probs", "aux_loss_scope": "global"}),
    ("qwen3-probs-hfform", "qwen3", {"drop_policy": "probs", "aux_loss_form": "hf"}),
]

BASE_MOE = {"capacity_factor": 1.0, "aux_loss_coef": 0.1, "z_loss_coef": 0.01, "router_temperature": 0.7}
TRAIN = {"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 2}


@pytest.mark.parametrize("case,variant,moe", CASES, ids=[c[0] for c in CASES])
def test_C4_capacity_aux_zloss_grads_vs_reference(case, variant, moe, hf_model_dir, token_file, tmp_path):
    """[C4.router][C4.capacity][C4.aux][C4.zloss][C4.objective] moe-debug grads == ref_moe.py:
    loss, aux_loss, z_loss, expert_load, dropped_frac, logits and every gradient."""
    path, toks = token_file
    d = hf_model_dir(variant)
    cfg = hf_tiny.make_config(d, path, tmp_path / "run", moe={**BASE_MOE, **moe}, train=TRAIN)
    ref = ref_moe.RefModel(d, cfg).grads(toks)
    # The case must exercise what it claims: pairs are dropped, and the drop policy matters.
    assert ref["dropped_frac"] > 0, "capacity 1.0 dropped nothing: the case tests no dropping"
    other = {"probs": "position", "position": "probs"}[cfg["moe"]["drop_policy"]]
    cfg_other = hf_tiny.make_config(d, path, tmp_path / "run", moe={**BASE_MOE, **moe, "drop_policy": other},
                                    train=TRAIN)
    ref_other = ref_moe.RefModel(d, cfg_other).grads(toks)
    assert abs(float(ref_other["loss"]) - float(ref["loss"])) > 1e-4, "drop policies agree here: weak case"

    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path)
    rep = {}
    diag = f"(reference's smallest routing/capacity margin {ref['margin']:.2e})"
    assert ours["expert_load"].tolist() == ref["expert_load"].tolist(), \
        f"expert_load {ours['expert_load'].tolist()} != {ref['expert_load'].tolist()} {diag}"
    assert abs(float(ours["dropped_frac"].reshape(())) - ref["dropped_frac"]) < 1e-6, \
        f"dropped_frac {float(ours['dropped_frac'].reshape(()))} != {ref['dropped_frac']} {diag}"
    for key in ("loss", "aux_loss", "z_loss"):
        check_close(key, ours[key].reshape(()), ref[key], RTOL, report=rep)
    check_close("logits", ours["logits"], ref["logits"], RTOL, report=rep)
    names = {k[len("grad."):] for k in ours if k.startswith("grad.")}
    assert names == set(ref["grads"]), f"gradient names differ: {sorted(names ^ set(ref['grads']))[:6]}"
    for k, g in ref["grads"].items():
        check_close(f"grad.{k}", ours["grad." + k], g, RTOL, report=rep)
    print_report(f"moe-debug vs reference {case}", rep)


def test_C4_capacity_formula():
    """[C4.capacity] C = ceil(cf*T*k/E) in double, as the reference uses it."""
    class R(ref_moe.RefModel):
        def __init__(self, cf, k, e):  # no model needed
            self.cf, self.k, self.E = cf, k, e
    assert R(1.0, 2, 4).capacity(32) == 16
    assert R(1.0, 2, 6).capacity(32) == 11
    assert R(1.25, 2, 6).capacity(32) == 14
    assert R(1.25, 2, 4).capacity(32) == 20
