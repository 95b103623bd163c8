# Owns the independent torch reference of DESIGN §4–§5 (router, capacity, aux/z loss, objective, data order, AdamW loop) around HF models.
"""Torch reference for the oracle tests.

The HF model (transformers' own attention, norms, RoPE, embeddings, lm_head)
is kept; only the forward of each sparse MoE block is replaced by a direct
implementation of DESIGN §4 (router, top-k, capacity + drop policies,
combine) that reads the block's own weights. Losses (CE over our explicit
targets, aux in both forms and scopes, z-loss), the objective C4.objective,
data order C5.order, AdamW C5.adamw, clipping C5.clip and the schedule C5.lr
are written out here from DESIGN, independently of the C++ code.

Computation runs in float64 by default so that the reference itself adds no
visible rounding: differences against our fp32 trainer are our rounding.
"""
import math
import types

import numpy as np
import torch
import torch.nn.functional as F

from hf_tiny import load_hf_model, split_fused


# ---------------------------------------------------------------- data [C5.tokens] [C5.order]

def num_windows(ntokens, seq_len):
    return (ntokens - 1) // seq_len


def global_batch(tokens, seq_len, batch, step):
    """Inputs and targets [B, L] of the global batch at `step` (single rank):
    window i = tokens[i*L : i*L+L+1], windows (step*B + j) mod n."""
    n = num_windows(len(tokens), seq_len)
    rows = []
    for j in range(batch):
        i = (step * batch + j) % n
        rows.append(np.asarray(tokens[i * seq_len: i * seq_len + seq_len + 1], dtype=np.int64))
    win = torch.from_numpy(np.stack(rows))
    return win[:, :seq_len].contiguous(), win[:, 1:].contiguous()


# ---------------------------------------------------------------- schedule [C5.lr]

def lr_at(step, train):
    lr, min_lr = float(train["lr"]), float(train.get("min_lr", 0.0))
    warmup, steps = int(train.get("warmup_steps", 0)), int(train["steps"])
    if step < warmup:
        return lr * (step + 1) / warmup
    if train.get("schedule", "cosine") == "constant":
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


# ---------------------------------------------------------------- router health (DESIGN §6 metrics)

def router_health(expert_load):
    """expert_utilization, load_imbalance, routing_entropy from expert_load [layers][E]."""
    load = torch.as_tensor(expert_load, dtype=torch.float64)
    n_exp = load.shape[1]
    util = float((load > 0).double().mean())
    imbalance = float((load.max(1).values / load.mean(1)).max())
    p = load / load.sum(1, keepdim=True)
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(1) / math.log(n_exp)
    return {"expert_utilization": util, "load_imbalance": imbalance, "routing_entropy": float(ent.mean())}


# ---------------------------------------------------------------- the model

class RefModel:
    """HF model with DESIGN §4 MoE blocks. cfg is the nested config dict given to moe-debug."""

    def __init__(self, hf_dir, cfg, dtype=torch.float64, hf_fp32_router_softmax=False):
        self.cfg = cfg
        # Only for validating this reference against transformers to ~1e-12: transformers' routers
        # take the routing softmax in fp32 even in a float64 model; mimic that when asked.
        self.hf_fp32_router_softmax = hf_fp32_router_softmax
        self.dtype = dtype
        self.model = load_hf_model(hf_dir, dtype)
        mc = self.model.config
        self.arch = mc.model_type
        self.E = mc.num_local_experts if self.arch == "mixtral" else mc.num_experts
        self.k = mc.num_experts_per_tok
        self.norm_topk = True if self.arch == "mixtral" else bool(mc.norm_topk_prob)
        moe = cfg["moe"]
        self.cf = float(moe["capacity_factor"])
        self.policy = moe["drop_policy"]
        self.temp = float(moe["router_temperature"])
        self.form = moe["aux_loss_form"]
        self.scope = moe["aux_loss_scope"]
        self.aux_coef = float(moe["aux_loss_coef"])
        self.z_coef = float(moe["z_loss_coef"])
        assert float(moe["router_jitter"]) == 0 and float(moe["expert_dropout"]) == 0, "random: not in oracles"
        assert float(moe["bias_update_rate"]) == 0, "aux-loss-free bias is not in the reference"
        self.moe_layers = []
        for i, layer in enumerate(self.model.model.layers):
            block = layer.mlp
            if hasattr(block, "experts") and hasattr(block, "gate"):
                block.forward = types.MethodType(self._make_forward(), block)
                self.moe_layers.append(i)
        self.records = None

    # -- one MoE block [C4.router] [C4.capacity] [C4.expert] [C4.combine]
    def _make_forward(self):
        ref = self

        def forward(block, hidden_states):
            bsz, seq, hid = hidden_states.shape
            x = hidden_states.reshape(-1, hid)
            n_tok = x.shape[0]
            logits = F.linear(x, block.gate.weight)  # fp64 here (>= fp32 as DESIGN asks)
            probs = torch.softmax(logits / ref.temp, dim=-1)
            route_probs = probs
            if ref.hf_fp32_router_softmax:
                route_probs = torch.softmax(logits.float() / ref.temp, dim=-1)
            # top-k on probs, ties -> lower expert index (stable descending sort)
            top_i = torch.sort(route_probs.detach(), dim=-1, descending=True, stable=True).indices[:, : ref.k]
            top_v = route_probs.gather(1, top_i)
            weights = top_v / top_v.sum(-1, keepdim=True) if ref.norm_topk else top_v
            weights = weights.to(x.dtype)
            counts = torch.bincount(top_i.reshape(-1), minlength=ref.E)
            keep = ref._capacity_keep(route_probs.detach(), top_i, n_tok)
            gate_up, down = block.experts.gate_up_proj, block.experts.down_proj
            inter = down.shape[-1]
            out = torch.zeros_like(x)
            for e in range(ref.E):
                tok, slot = torch.nonzero((top_i == e) & keep, as_tuple=True)
                if tok.numel() == 0:
                    continue
                xe = x[tok]
                h = F.silu(xe @ gate_up[e, :inter].T) * (xe @ gate_up[e, inter:].T)
                y = h @ down[e].T
                out = out.index_add(0, tok, y * weights[tok, slot].unsqueeze(-1))
            ref.records.append({"logits": logits, "probs": probs, "counts": counts,
                                "dropped": int((~keep).sum()), "pairs": keep.numel(), "T": n_tok,
                                "margin": ref._margin(route_probs.detach(), top_i, keep)})
            return out.reshape(bsz, seq, hid)

        return forward

    def capacity(self, n_tok):
        # C = ceil(cf * T * k / E), computed in double [C4.capacity]
        return math.ceil(self.cf * n_tok * self.k / self.E)

    def _capacity_keep(self, probs, top_i, n_tok):
        keep = torch.ones_like(top_i, dtype=torch.bool)
        if self.cf <= 0:
            return keep
        cap = self.capacity(n_tok)
        for e in range(self.E):
            tok, slot = torch.nonzero(top_i == e, as_tuple=True)  # tok ascending = flat order b*L+t
            if tok.numel() <= cap:
                continue
            if self.policy == "position":
                order = torch.arange(tok.numel())
            elif self.policy == "probs":
                # highest probs[t, e] first; stable sort keeps the earlier token on ties
                order = torch.sort(probs[tok, e], descending=True, stable=True).indices
            else:
                raise ValueError(self.policy)
            drop = order[cap:]
            keep[tok[drop], slot[drop]] = False
        return keep

    def _margin(self, probs, top_i, keep):
        """Smallest gap between a decision and its runner-up (top-k boundary per token; capacity
        boundary per expert for the probs policy). Tiny margins explain routing flips."""
        srt = torch.sort(probs, dim=-1, descending=True).values
        gaps = [float((srt[:, self.k - 1] - srt[:, self.k]).min())] if self.k < self.E else []
        if self.cf > 0 and self.policy == "probs":
            for e in range(self.E):
                tok, slot = torch.nonzero(top_i == e, as_tuple=True)
                kept = keep[tok, slot]
                if kept.all() or not kept.any():
                    continue
                gaps.append(float(probs[tok[kept], e].min() - probs[tok[~kept], e].max()))
        return min(gaps) if gaps else float("inf")

    # -- losses of one micro-batch [C4.aux] [C4.zloss]
    def _aux(self, recs, counts_for_f, t_for_f):
        E, k = self.E, self.k
        if self.form == "layer":
            vals = [(E / k) * ((c.to(self.dtype) / tf) * r["probs"].mean(0)).sum()
                    for r, c, tf in zip(recs, counts_for_f, t_for_f)]
            return torch.stack(vals).mean()
        if self.form == "hf":
            # transformers' load_balancing_loss_func: all layers pooled, times E, not / k
            rows_f = sum(t_for_f)
            c = sum(c.to(self.dtype) for c in counts_for_f)
            rows_p = sum(r["T"] for r in recs)
            p = sum(r["probs"].sum(0) for r in recs)
            return E * ((c / rows_f) * (p / rows_p)).sum()
        raise ValueError(self.form)

    @staticmethod
    def _z(recs):
        return torch.stack([torch.logsumexp(r["logits"], dim=-1).pow(2).mean() for r in recs]).mean()

    # -- one optimizer step's objective [C4.objective]
    def step_objective(self, inputs, targets):
        train = self.cfg["train"]
        mb, n_micro = int(train["micro_batch"]), int(train["grad_accum"])
        assert inputs.shape[0] == mb * n_micro
        n_loss = targets.numel()
        ce_sums, all_recs, logits_all = [], [], []
        for m in range(n_micro):
            self.records = []
            sl = slice(m * mb, (m + 1) * mb)
            logits = self.model(input_ids=inputs[sl]).logits
            ce_sums.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[sl].reshape(-1),
                                           reduction="sum"))
            logits_all.append(logits)
            all_recs.append(self.records)
            self.records = None
        n_layers = len(self.moe_layers)
        global_counts = [sum(recs[l]["counts"] for recs in all_recs) for l in range(n_layers)]
        global_t = sum(recs[0]["T"] for recs in all_recs) if n_layers else 0
        aux_ms, z_ms = [], []
        for recs in all_recs:
            if n_layers == 0:
                aux_ms.append(torch.zeros((), dtype=self.dtype))
                z_ms.append(torch.zeros((), dtype=self.dtype))
                continue
            if self.scope == "micro":
                aux_ms.append(self._aux(recs, [r["counts"] for r in recs], [r["T"] for r in recs]))
            elif self.scope == "global":
                aux_ms.append(self._aux(recs, global_counts, [global_t] * n_layers))
            else:
                raise ValueError(self.scope)
            z_ms.append(self._z(recs))
        objective = sum(c / n_loss for c in ce_sums) + sum(
            (self.aux_coef * a + self.z_coef * z) / n_micro for a, z in zip(aux_ms, z_ms))
        self.last_margin = min((r["margin"] for recs in all_recs for r in recs), default=float("inf"))
        dropped = sum(r["dropped"] for recs in all_recs for r in recs)
        pairs = sum(r["pairs"] for recs in all_recs for r in recs)
        return {
            "objective": objective,
            "loss": (sum(ce_sums) / n_loss).detach(),
            "aux_loss": torch.stack(aux_ms).mean().detach(),
            "z_loss": torch.stack(z_ms).mean().detach(),
            "logits": torch.cat(logits_all).detach(),
            "expert_load": torch.stack(global_counts).to(torch.float64) if n_layers else torch.zeros(0),
            "dropped_frac": dropped / pairs if pairs else 0.0,
            "margin": self.last_margin,
        }

    # -- debug "grads": step-0 batch, forward + backward, no update
    def grads(self, tokens, step=0):
        train = self.cfg["train"]
        batch = int(train["micro_batch"]) * int(train["grad_accum"])
        inputs, targets = global_batch(tokens, int(train["seq_len"]), batch, step)
        self.model.zero_grad(set_to_none=True)
        out = self.step_objective(inputs, targets)
        out["objective"].backward()
        out["grads"] = split_fused(self.model, lambda p: p.grad)
        return out

    # -- training loop [C5.adamw] [C5.clip] [C5.lr]
    def train(self, tokens):
        train = self.cfg["train"]
        L = int(train["seq_len"])
        batch = int(train["micro_batch"]) * int(train["grad_accum"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(train["weight_decay"])},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=float(train["lr"]), betas=(float(train["beta1"]), float(train["beta2"])),
            eps=float(train["eps"]), foreach=False)
        for p in params:
            p.grad = torch.zeros_like(p)
        clip = float(train["grad_clip"])
        metrics = []
        for s in range(int(train["steps"])):
            lr = lr_at(s, train)
            inputs, targets = global_batch(tokens, L, batch, s)
            for p in params:
                p.grad.zero_()
            out = self.step_objective(inputs, targets)
            out["objective"].backward()
            norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
            if clip > 0:
                coef = min(1.0, clip / (norm + 1e-6))
                for p in params:
                    p.grad.mul_(coef)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            metrics.append({"step": s + 1, "loss": float(out["loss"]), "aux_loss": float(out["aux_loss"]),
                            "z_loss": float(out["z_loss"]), "lr": lr, "grad_norm": norm,
                            "tokens": batch * L, "expert_load": out["expert_load"].tolist(),
                            "dropped_frac": out["dropped_frac"], "margin": out["margin"]})
        return metrics

    def params(self):
        return split_fused(self.model, lambda p: p.data)


# ---------------------------------------------------------------- Philox randomness (core/rng.h)

_M32 = np.uint64(0xFFFFFFFF)


def philox_uniform(seed, purpose, index, s1, s2):
    """Philox4x32-10 uniforms in [0, 1) as the contract draws them (core/rng.h Philox::uniform): key
    (seed low word, seed high word ^ purpose·0x9E3779B9), counter (index low, index high, s1, s2), 53 bits of
    (c0 << 21) ^ (c1 >> 11). index: array of non-negative integers; s1, s2: scalars or arrays (uint32)."""
    index = np.asarray(index, dtype=np.uint64)
    k0 = np.uint64(seed & 0xFFFFFFFF)
    k1 = np.uint64(((seed >> 32) ^ ((purpose * 0x9E3779B9) & 0xFFFFFFFF)) & 0xFFFFFFFF)
    c0, c1 = index & _M32, index >> np.uint64(32)
    c2 = np.broadcast_to(np.asarray(s1, dtype=np.uint64), index.shape) & _M32
    c3 = np.broadcast_to(np.asarray(s2, dtype=np.uint64), index.shape) & _M32
    a, b = k0, k1
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        n0 = (p1 >> np.uint64(32)) ^ c1 ^ a
        n2 = (p0 >> np.uint64(32)) ^ c3 ^ b
        c0, c1, c2, c3 = n0, p1 & _M32, n2, p0 & _M32
        a = (a + np.uint64(0x9E3779B9)) & _M32
        b = (b + np.uint64(0xBB67AE85)) & _M32
    bits = ((c0 << np.uint64(21)) ^ (c1 >> np.uint64(11))) & np.uint64((1 << 53) - 1)
    return bits.astype(np.float64) / float(1 << 53)


RNG_LORA_DROPOUT = 6  # RngPurpose::LoraDropout


def lora_dropout_mask(seed, step, layer, global_micro, tag, rows, width, p):
    """[len(rows), width] float64 mask of LoRA dropout (backend/dense_ops.h LoraDropout): row keys
    (rng_stream(layer, micro) << 32) | row, where row is the token index in the micro-batch (attention adapters) or
    the pair t·K + k (expert adapters); tag = LoraProj index (q 0, k 1, v 2, o 3, gate_up 4, down 6). Entries are 0
    or 1/(1−p)."""
    stream = ((layer << 20) ^ global_micro) & 0xFFFFFFFF
    s2 = (stream ^ (((tag + 1) << 27) & 0xFFFFFFFF)) & 0xFFFFFFFF
    rows = np.asarray(rows, dtype=np.uint64)
    idx = rows[:, None] * np.uint64(width) + np.arange(width, dtype=np.uint64)[None, :]
    u = philox_uniform(seed, RNG_LORA_DROPOUT, idx, step, s2)
    return torch.from_numpy((u >= p).astype(np.float64) / (1.0 - p))
