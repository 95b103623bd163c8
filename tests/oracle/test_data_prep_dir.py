# Owns the oracles on prepared data directories: prompt masking (labels -100) and data.mix against transformers / counts.
"""A moe-prep build directory (tokens.bin uint32, loss_mask.bin uint8 per token, meta.json) is written here by
numpy from random ids and a random answer mask (independent of moe-prep). moe-train reads it memory-mapped.

  * data.mask_prompt: the logged loss of one step (2 micro-batches of 2 windows) equals transformers' loss on
    the same 4 windows with labels -100 where the mask is 0 (mean over the unmasked targets of the whole global
    batch), logits equal, and the gradient equals the gradient of that loss (moe-debug grads, fp32 vs float64).
  * without data.mask_prompt the same directory trains on every target (the loss of all labels).
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_tiny
import ref_moe
from conftest import NTOKENS, SEQ_LEN
from hf_tiny import check_close, print_report

RTOL = 1e-5


def write_prep_dir(d, toks, mask):
    d.mkdir(parents=True, exist_ok=True)
    np.asarray(toks, dtype="<u4").tofile(d / "tokens.bin")
    np.asarray(mask, dtype=np.uint8).tofile(d / "loss_mask.bin")
    np.asarray([0, len(toks)], dtype="<u8").tofile(d / "docs.bin")
    (d / "meta.json").write_text(json.dumps({"format_version": 1, "num_tokens": int(len(toks)),
                                             "num_loss_tokens": int(np.sum(mask))}))
    return d


@pytest.mark.parametrize("mask_prompt", [True, False], ids=["mask_prompt", "all_targets"])
def test_masked_loss_equals_transformers(mask_prompt, hf_model_dir, token_file, tmp_path):
    _, toks = token_file
    rng = np.random.default_rng(5)
    # Runs of prompt (0) and answer (1) tokens, as chat data has them.
    mask = np.repeat(rng.integers(0, 2, size=len(toks) // 5 + 1), 5)[: len(toks)].astype(np.uint8)
    prep = write_prep_dir(tmp_path / "prep", toks, mask)
    d = hf_model_dir("mixtral")
    cfg = hf_tiny.make_config(d, prep, tmp_path / "run",
                              train={"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 2},
                              data={"format": "tokens", "mask_prompt": mask_prompt})
    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / "dbg")

    inputs, targets = ref_moe.global_batch(toks, SEQ_LEN, 4, 0)
    if mask_prompt:
        tmask = torch.from_numpy(np.stack([mask[i * SEQ_LEN + 1: i * SEQ_LEN + SEQ_LEN + 1] for i in range(4)]))
        labels = torch.where(tmask.bool(), targets, torch.full_like(targets, -100))
        assert 0 < int(tmask.sum()) < tmask.numel(), "the batch must hold both masked and unmasked targets"
    else:
        labels = targets
    model = hf_tiny.load_hf_model(d, torch.float64)
    logits = model(input_ids=inputs).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    loss.backward()
    want = hf_tiny.split_fused(model, lambda p: p.grad)
    rep = {}
    check_close("logits", ours["logits"], logits.detach(), RTOL, report=rep)
    check_close("loss", ours["loss"].reshape(()), loss.detach(), RTOL, report=rep)
    # The router's aux/z terms are 0 in BASE_CONFIG; every gradient is the CE gradient of the masked mean.
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight"):
        check_close(f"grad.{name}", ours["grad." + name], want[name], RTOL, report=rep)
    print_report(f"prepared dir, mask_prompt={mask_prompt}", rep)


def test_reset_attention_equals_per_document_forward(hf_model_dir, token_file, tmp_path):
    """data.reset_attention over packed documents == transformers run on each document piece of a window on its own
    (positions from 0, no attention across documents); the target of a document's last token (the next document's
    first token) is not counted, as HF's flattening collator labels it -100. Logits, loss and gradients, 1e-5."""
    _, toks = token_file
    rng = np.random.default_rng(9)
    starts = [0]
    while starts[-1] < len(toks):
        starts.append(starts[-1] + int(rng.integers(3, 2 * SEQ_LEN)))
    starts = starts[:-1] + [len(toks)]
    prep = write_prep_dir(tmp_path / "prep", toks, np.ones(len(toks), np.uint8))
    np.asarray(starts, dtype="<u8").tofile(prep / "docs.bin")
    d = hf_model_dir("mixtral")
    cfg = hf_tiny.make_config(d, prep, tmp_path / "run", train={"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 2},
                              data={"format": "tokens", "reset_attention": True})
    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / "dbg")

    model = hf_tiny.load_hf_model(d, torch.float64)
    doc_starts = set(starts)
    rows, labels = [], []
    pieces = 0
    for w in range(4):
        p = w * SEQ_LEN
        cuts = [p] + [s for s in starts if p < s < p + SEQ_LEN] + [p + SEQ_LEN]
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            ids = torch.tensor([list(toks[a:b])], dtype=torch.long)
            parts.append(model(input_ids=ids).logits[0])  # positions 0.. within the piece, attention within it
            pieces += 1
        rows.append(torch.cat(parts))
        labels.append([int(toks[p + t + 1]) if (p + t + 1) not in doc_starts else -100 for t in range(SEQ_LEN)])
    assert pieces > 4, "the windows must hold document boundaries"
    logits = torch.stack(rows)
    lab = torch.tensor(labels)
    assert (lab == -100).any()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100)
    loss.backward()
    want = hf_tiny.split_fused(model, lambda p: p.grad)
    rep = {}
    check_close("logits", ours["logits"], logits.detach(), RTOL, report=rep)
    check_close("loss", ours["loss"].reshape(()), loss.detach(), RTOL, report=rep)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.self_attn.k_proj.weight", "model.layers.1.block_sparse_moe.experts.0.w1.weight"):
        check_close(f"grad.{name}", ours["grad." + name], want[name], RTOL, report=rep)
    print_report("reset_attention vs per-document transformers", rep)
