# Owns the oracles against unmodified transformers: logits, CE loss, every gradient, HF-form aux loss ([C4.layer] ... [C4.aux]).
import torch
import torch.nn.functional as F

import hf_tiny
import ref_moe
from conftest import SEQ_LEN
from hf_tiny import check_close, print_report

ALL = ["mixtral", "qwen3", "qwen3_nonorm", "mixtral_tied"]
# fp32 trainer vs float64 transformers; see the report for the achieved values.
RTOL = 1e-5
# Reference validation: float64 reference (mimicking transformers' fp32 routing softmax) vs
# float64 transformers.
REF_RTOL = 1e-10
# transformers' load_balancing_loss_func accumulates in float32 (also in a float64 model).
REF_AUX_RTOL = 2e-6


def hf_reference(hf_dir, inputs, targets, aux_coef=0.0):
    """Unmodified transformers in float64: logits, token-mean CE over our targets, HF's
    own aux loss (output_router_logits) and the gradient of CE + aux_coef*aux."""
    model = hf_tiny.load_hf_model(hf_dir, torch.float64)
    out = model(input_ids=inputs, output_router_logits=aux_coef > 0)
    logits = out.logits
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    total = ce + aux_coef * out.aux_loss if aux_coef > 0 else ce
    total.backward()
    grads = hf_tiny.split_fused(model, lambda p: p.grad)
    aux = out.aux_loss.detach() if aux_coef > 0 else None
    return logits.detach(), ce.detach(), aux, grads, model


def batch(cfg, toks):
    t = cfg["train"]
    return ref_moe.global_batch(toks, t["seq_len"], t["micro_batch"] * t["grad_accum"], 0)


def test_disk_names_roundtrip(hf_model_dir):
    """split_fused (used to name every reference gradient) maps the v5 modules exactly onto
    the tensors save_pretrained wrote."""
    for variant in ALL:
        d = hf_model_dir(variant)
        model = hf_tiny.load_hf_model(d, torch.float64)
        mine = hf_tiny.split_fused(model, lambda p: p.data)
        disk = hf_tiny.disk_tensors(d)
        assert sorted(mine) == sorted(disk), set(mine) ^ set(disk)
        for k in disk:
            assert torch.equal(mine[k], disk[k]), k


def test_ref_matches_hf(hf_model_dir, token_file, tmp_path):
    """Validates ref_moe.py: dropless, coefs 0, our reference MoE block == transformers' block
    (logits, loss, all grads), and our CE == transformers' causal-LM loss with shift_labels."""
    path, toks = token_file
    for variant in ALL:
        d = hf_model_dir(variant)
        cfg = hf_tiny.make_config(d, path, tmp_path / variant, train={"micro_batch": 2, "grad_accum": 2})
        inputs, targets = batch(cfg, toks)
        logits, ce, _, grads, model = hf_reference(d, inputs, targets)
        ref = ref_moe.RefModel(d, cfg, hf_fp32_router_softmax=True).grads(toks)
        rep = {}
        check_close(f"{variant}.logits", ref["logits"], logits, REF_RTOL, report=rep)
        check_close(f"{variant}.loss", ref["loss"], ce, REF_RTOL, report=rep)
        for k, g in grads.items():
            check_close(f"{variant}.grad.{k}", ref["grads"][k], g, REF_RTOL, report=rep)
        print_report(f"ref vs HF {variant}", rep)
        # HF's own loss function on the same targets (its loss upcasts logits to fp32 only).
        hf_loss = model.loss_function(logits, targets, model.config.vocab_size, shift_labels=targets)
        assert abs(hf_loss.item() - ce.item()) <= 1e-6 * abs(ce.item())


def test_ref_aux_hf_form_matches_hf(hf_model_dir, token_file, tmp_path):
    """Validates the reference's hf aux form against load_balancing_loss_func (value and grads)."""
    path, toks = token_file
    for variant in ALL:
        d = hf_model_dir(variant)
        cfg = hf_tiny.make_config(d, path, tmp_path / variant,
                                  moe={"aux_loss_form": "hf", "aux_loss_coef": 0.5})
        inputs, targets = batch(cfg, toks)
        _, _, aux, grads, _ = hf_reference(d, inputs, targets, aux_coef=0.5)
        ref = ref_moe.RefModel(d, cfg, hf_fp32_router_softmax=True).grads(toks)
        rep = {}
        check_close(f"{variant}.aux", ref["aux_loss"], aux, REF_AUX_RTOL, report=rep)
        for k, g in grads.items():
            check_close(f"{variant}.grad.{k}", ref["grads"][k], g, REF_AUX_RTOL, report=rep)
        print_report(f"ref hf-aux vs HF {variant}", rep)


def test_C4_layer_forward_grads_vs_hf(hf_model_dir, token_file, tmp_path):
    """[C4.layer][C4.attention][C4.rmsnorm][C4.router][C4.expert][C4.combine][C4.objective]
    moe-debug grads (dropless, coefs 0, micro_batch 2 x grad_accum 2) == transformers run on
    all 4 windows at once: logits, loss, every parameter gradient."""
    path, toks = token_file
    for variant in ALL:
        d = hf_model_dir(variant)
        cfg = hf_tiny.make_config(d, path, tmp_path / variant / "run",
                                  train={"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 2})
        inputs, targets = batch(cfg, toks)
        logits, ce, _, grads, _ = hf_reference(d, inputs, targets)
        ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / variant)
        rep = {}
        check_close(f"{variant}.logits", ours["logits"], logits, RTOL, report=rep)
        check_close(f"{variant}.loss", ours["loss"].reshape(()), ce, RTOL, report=rep)
        missing = sorted(set(grads) - {k[len("grad."):] for k in ours if k.startswith("grad.")})
        assert not missing, f"moe-debug wrote no gradient for {missing[:5]}"
        extra = sorted({k[len("grad."):] for k in ours if k.startswith("grad.")} - set(grads))
        assert not extra, f"moe-debug wrote gradients for unknown parameters {extra[:5]}"
        for k, g in grads.items():
            check_close(f"{variant}.grad.{k}", ours["grad." + k], g, RTOL, report=rep)
        print_report(f"moe-debug vs HF {variant}", rep)


def test_C4_aux_hf_form_vs_hf(hf_model_dir, token_file, tmp_path):
    """[C4.aux] aux_loss_form hf (one micro-batch) == transformers' outputs.aux_loss, and the
    gradients of CE + coef*aux == transformers' backward of the same sum."""
    path, toks = token_file
    coef = 0.5  # large so the aux part of the gradient is visible next to CE
    for variant in ALL:
        d = hf_model_dir(variant)
        cfg = hf_tiny.make_config(d, path, tmp_path / variant / "run",
                                  moe={"aux_loss_form": "hf", "aux_loss_coef": coef},
                                  train={"seq_len": SEQ_LEN, "micro_batch": 2, "grad_accum": 1})
        inputs, targets = batch(cfg, toks)
        logits, ce, aux, grads, _ = hf_reference(d, inputs, targets, aux_coef=coef)
        ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / variant)
        rep = {}
        check_close(f"{variant}.aux_loss", ours["aux_loss"].reshape(()), aux, RTOL, report=rep)
        check_close(f"{variant}.loss", ours["loss"].reshape(()), ce, RTOL, report=rep)
        for k, g in grads.items():
            check_close(f"{variant}.grad.{k}", ours["grad." + k], g, RTOL, report=rep)
        print_report(f"moe-debug hf-aux vs HF {variant}", rep)
