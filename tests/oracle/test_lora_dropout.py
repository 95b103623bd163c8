# Owns the LoRA-dropout oracle: logits and adapter gradients with peft.dropout > 0 == a torch autograd reference.
"""peft.dropout masks each adapter's input during training (PEFT: lora_B(lora_A(dropout(x))) · scaling).

Reference: the real PEFT model (float64) with its attention adapters' dropout modules replaced by the contract's
masks (ref_moe.lora_dropout_mask: Philox draws keyed by layer, micro-batch, projection and token), and each MoE
layer's experts computed per routed (token, slot) pair by torch with the same kind of mask on the gate_up input x
(one mask for gate and up: they share one lora_A) and on the down input h. Gradients come from torch autograd;
ours from moe-debug (one step, fp32). Dropout must change the result (the case exercises it).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hf_tiny
import ref_moe
from conftest import SEQ_LEN
from hf_tiny import check_close, print_report
from test_lora_peft import ALPHA, R, our_names, peft_model

RTOL = 1e-5
P = 0.3
SEED = 1234  # BASE_CONFIG train.seed
TAGS = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3}


class MaskDropout(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask.reshape(x.shape)


class MaskedLoraExperts(nn.Module):
    """The experts of one MoE layer: base W + split LoRA with dropout masks per routed pair t·K + k."""

    def __init__(self, layer, gate_up, down, adapters, scaling):
        super().__init__()
        self.layer, self.gate_up, self.down, self.ad, self.s = layer, gate_up, down, adapters, scaling

    def forward(self, hidden, top_k_index, top_k_weights):
        T, H = hidden.shape
        K = top_k_index.shape[1]
        I = self.down.shape[2]
        pairs = torch.arange(T * K)
        mg = ref_moe.lora_dropout_mask(SEED, 0, self.layer, 0, 4, pairs.numpy(), H, P)
        md = ref_moe.lora_dropout_mask(SEED, 0, self.layer, 0, 6, pairs.numpy(), I, P)
        rows = []
        for t in range(T):
            acc = torch.zeros(H, dtype=hidden.dtype)
            for k in range(K):
                e, pr = int(top_k_index[t, k]), t * K + k
                a = self.ad[e]
                x = hidden[t]
                u = self.s * (a["gu_A"] @ (x * mg[pr]))
                gu = self.gate_up[e] @ x + a["gu_B"] @ u
                h = F.silu(gu[:I]) * gu[I:]
                y = self.down[e] @ h + self.s * (a["dn_B"] @ (a["dn_A"] @ (h * md[pr])))
                acc = acc + top_k_weights[t, k].to(hidden.dtype) * y
            rows.append(acc)
        return torch.stack(rows)


def test_lora_dropout_vs_reference(hf_model_dir, token_file, tmp_path):
    path, toks = token_file
    d = hf_model_dir("mixtral")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
    pm = peft_model(d, targets, router=False, rslora=False, seed=41)
    adapter_dir = tmp_path / "adapter"
    import copy
    copy.deepcopy(pm).float().save_pretrained(str(adapter_dir))
    inputs, targets_t = ref_moe.global_batch(toks, SEQ_LEN, 2, 0)
    with torch.no_grad():
        no_dropout = pm(input_ids=inputs).logits.clone()

    # Attention adapters: PEFT's own LoRA Linears with the contract's masks as their dropout.
    layers = pm.base_model.model.model.layers
    B, L = inputs.shape
    for li, layer in enumerate(layers):
        for name, tag in TAGS.items():
            lin = getattr(layer.self_attn, name)
            width = lin.in_features
            mask = ref_moe.lora_dropout_mask(SEED, 0, li, 0, tag, range(B * L), width, P)
            lin.lora_dropout["default"] = MaskDropout(mask.reshape(B, L, width))
    # Experts: leaf tensors per expert from PEFT's fused adapters (docs/PEFT_LAYOUT.md split), base from the file.
    logical = our_names(pm, "mixtral", lambda p: p.data)
    base = hf_tiny.load_hf_model(d, torch.float64)
    leaves = {}
    for li, layer in enumerate(layers):
        E = base.config.num_local_experts
        ad = []
        for e in range(E):
            pre = f"model.layers.{li}.block_sparse_moe.experts.{e}."
            names = {"gu_A": "gate_up_proj.lora_A", "gu_B": "gate_up_proj.lora_B", "dn_A": "down_proj.lora_A",
                     "dn_B": "down_proj.lora_B"}
            t = {}
            for key, n in names.items():
                full = pre + n + ".weight"
                leaves[full] = t[key] = logical[full].clone().requires_grad_(True)
            ad.append(t)
        bm = base.model.layers[li].mlp.experts
        layer.mlp.experts = MaskedLoraExperts(li, bm.gate_up_proj.detach(), bm.down_proj.detach(), ad, ALPHA / R)

    logits = pm(input_ids=inputs).logits
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets_t.reshape(-1))
    ce.backward()
    want = {k: v for k, v in our_names(pm, "mixtral", lambda p: p.grad).items() if "self_attn" in k}
    want.update({k: v.grad for k, v in leaves.items()})
    assert (logits.detach() - no_dropout).abs().max() > 1e-3, "dropout did not change the logits"

    cfg = hf_tiny.make_config(d, path, tmp_path / "run", train={"seq_len": SEQ_LEN, "micro_batch": 2},
                              peft={"method": "lora", "r": R, "alpha": ALPHA, "dropout": P,
                                    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w3", "w2"],
                                    "train_router": False},
                              model={"adapter_from": str(adapter_dir)})
    ours, _ = hf_tiny.run_moe_debug("grads", cfg, tmp_path / "dbg")
    rep = {}
    check_close("logits", ours["logits"], logits.detach(), RTOL, report=rep)
    check_close("loss", ours["loss"].reshape(()), ce.detach(), RTOL, report=rep)
    got = {k[len("grad."):] for k in ours if k.startswith("grad.")}
    assert got == set(want), f"gradients: extra {sorted(got - set(want))[:4]}, missing {sorted(set(want) - got)[:4]}"
    for k, g in want.items():
        assert g.abs().max() > 0, f"reference gradient of {k} is zero"
        check_close(f"grad.{k}", ours["grad." + k], g, RTOL, report=rep)
    print_report(f"LoRA dropout p={P} vs torch reference", rep)
