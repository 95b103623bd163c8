# Owns the held-out evaluation oracle: moe-train's eval loss and eval router load == transformers on the same windows.
"""eval.* against transformers.

moe-train trains a tiny HF Mixtral / Qwen3-MoE a few steps (dropless routing, so the function is HF's), evaluates
held-out token windows at the start and at the end, and exports the final model. The real transformers model
(float64) loaded from the exported directory (and the base before training, for the at_start line) computes CE
over the same eval windows (the first eval.batches global batches, window i = tokens[i*L : i*L+L+1]) and the
router's top-k counts per layer (output_router_logits). Expected: eval_loss equal within 1e-5 relative, eval_ppl =
exp(eval_loss), eval_tokens = windows x L, eval_expert_load equal to the transformers counts up to near-ties
(fp32 vs float64 router logits may swap the k-th choice of a token: at most 0.5% of the assignments).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_tiny
from conftest import SEQ_LEN

MB, ACCUM, EVAL_BATCHES = 2, 2, 3  # global batch 4 windows; 3 global batches = 12 eval windows


def hf_eval(hf_dir, eval_tokens, windows):
    model = hf_tiny.load_hf_model(hf_dir, torch.float64).eval()
    rows = [np.asarray(eval_tokens[i * SEQ_LEN: i * SEQ_LEN + SEQ_LEN + 1], dtype=np.int64) for i in range(windows)]
    win = torch.from_numpy(np.stack(rows))
    inputs, targets = win[:, :SEQ_LEN], win[:, 1:]
    with torch.no_grad():
        out = model(input_ids=inputs, output_router_logits=True)
    ce = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), targets.reshape(-1), reduction="sum")
    k = model.config.num_experts_per_tok
    loads = []
    for logits in out.router_logits:  # [tokens, E] per MoE layer
        top = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1).indices
        loads.append(torch.bincount(top.reshape(-1), minlength=logits.shape[-1]).tolist())
    return ce.item() / targets.numel(), loads, targets.numel()


@pytest.mark.parametrize("variant", ["mixtral", "qwen3"])
def test_eval_loss_and_load_equal_transformers(variant, hf_model_dir, token_file, tmp_path):
    path, _ = token_file
    d = hf_model_dir(variant)
    eval_path = tmp_path / "heldout.u32"
    windows = EVAL_BATCHES * MB * ACCUM
    eval_tokens = hf_tiny.write_tokens(eval_path, (windows + 2) * SEQ_LEN + 1, seed=77)  # 2 spare windows unused
    cfg = hf_tiny.make_config(d, path, tmp_path / "run",
                              train={"seq_len": SEQ_LEN, "micro_batch": MB, "grad_accum": ACCUM, "steps": 4,
                                     "lr": 1e-2},
                              checkpoint={"export_hf": True},
                              eval={"data": str(eval_path), "batches": EVAL_BATCHES, "at_start": True, "every": 2})
    run = hf_tiny.run_moe_train(cfg, tmp_path)
    lines = [m for m in hf_tiny.read_metrics(run) if "eval_loss" in m]
    assert [m["step"] for m in lines] == [0, 2, 4], [m["step"] for m in lines]
    for m, model_dir in ((lines[0], d), (lines[-1], run / "hf")):
        want_loss, want_load, ntok = hf_eval(model_dir, eval_tokens, windows)
        assert m["eval_tokens"] == ntok
        assert abs(m["eval_loss"] - want_loss) <= 1e-5 * abs(want_loss), (m["step"], m["eval_loss"], want_loss)
        assert math.isclose(m["eval_ppl"], math.exp(m["eval_loss"]), rel_tol=1e-12)
        got = np.asarray(m["eval_expert_load"])
        want = np.asarray(want_load)
        assert got.shape == want.shape and got.sum() == want.sum()
        assert np.abs(got - want).sum() <= 0.005 * want.sum(), (got.tolist(), want.tolist())
        print(f"{variant} step {m['step']}: eval loss {m['eval_loss']:.8f} vs transformers {want_loss:.8f} "
              f"(rel {abs(m['eval_loss'] - want_loss) / want_loss:.1e}); load diff {np.abs(got - want).sum()}")
