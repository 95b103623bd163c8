# Owns the torch side of bench/train_throughput.sh and bench/gpu_train_throughput.sh: transformers MixtralForCausalLM training steps (fp32, bf16 autocast, or bf16 parameters), timed, on the CPU or one GPU.
"""Train transformers' MixtralForCausalLM (torch eager mode, CPU or --device cuda) on the same batches as
moe-train's bench config and print the median tokens/s of the timed steps as one JSON line.
Precisions: fp32; bf16 = forward and loss under torch.autocast (fp32 weights and AdamW); bf16-params = the model's
parameters, gradients and AdamW moments in bf16 (no fp32 master: less work than moe-train's bf16, which keeps fp32
masters and moments; on CUDA it is the recipe under which transformers' grouped_mm experts run bf16 GEMMs, since
grouped_mm is not autocast-enabled and would run fp32 GEMMs with fp32 weights).

The model shape, optimizer and loss are read from the moe-train YAML (--config, default bench/bench_small.yaml):
  loss = CE(logits, targets) + router_aux_loss_coef * load_balancing_loss_func(...)
  AdamW(betas 0.9/0.95, eps 1e-8), clip_grad_norm_(1.0).
Batches: window i of the token file is tokens[i*L : i*L + L + 1] (inputs = first L, targets = last L),
step s uses windows s*B .. s*B + B - 1 (moe-train's order without shuffling).
A timed step is zero_grad + forward + backward + clip + optimizer step.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import yaml


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", required=True, help="uint32 token file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    ap.add_argument("--config", default="bench/bench_small.yaml",
                    help="moe-train YAML: model, moe and train keys are read from it")
    ap.add_argument("--batch", type=int, default=None, help="override train.micro_batch")
    ap.add_argument("--seq", type=int, default=None, help="override train.seq_len")
    ap.add_argument("--attn", default="eager", help="attn_implementation: eager | sdpa")
    ap.add_argument("--experts-impl", default="eager", help="experts_implementation: eager | grouped_mm | batched_mm")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16-params"],
                    help="bf16: forward and loss under torch.autocast(device, torch.bfloat16); "
                         "bf16-params: bf16 parameters and AdamW states")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: GPU 0 (timed with synchronize)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with open(a.config) as f:
        y = yaml.safe_load(f)
    m, moe, tr = y["model"], y.get("moe", {}), y["train"]
    if m.get("arch", "mixtral") != "mixtral":
        sys.exit(f"{a.config}: model.arch must be mixtral for this bench")
    if float(moe.get("capacity_factor", 0)) != 0 or float(moe.get("z_loss_coef", 0)) != 0 \
            or float(moe.get("router_jitter", 0)) != 0 or moe.get("aux_loss_form", "layer") != "hf" \
            or int(tr.get("grad_accum", 1)) != 1:
        sys.exit(f"{a.config}: the torch side mirrors capacity_factor 0, z_loss_coef 0, no jitter, "
                 "aux_loss_form hf and grad_accum 1 only")
    vocab, aux_coef = int(m["vocab_size"]), float(moe.get("aux_loss_coef", 0.01))
    B = a.batch or int(tr["micro_batch"])
    L = a.seq or int(tr["seq_len"])

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        vocab_size=vocab, hidden_size=int(m["hidden_size"]), intermediate_size=int(m["intermediate_size"]),
        num_hidden_layers=int(m["num_layers"]), num_attention_heads=int(m["num_heads"]),
        num_key_value_heads=int(m["num_kv_heads"]), num_local_experts=int(m["num_experts"]),
        num_experts_per_tok=int(m["top_k"]), max_position_embeddings=L,
        rms_norm_eps=float(m.get("rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(m.get("rope_theta", 1e6))},
        initializer_range=float(m.get("init_std", 0.02)), tie_word_embeddings=bool(m.get("tie_word_embeddings", False)),
        attention_dropout=0.0, router_jitter_noise=0.0, output_router_logits=True,
        router_aux_loss_coef=aux_coef, use_cache=False)
    cfg._attn_implementation = a.attn
    cfg._experts_implementation = a.experts_impl
    with dev:  # parameters are created (and initialised) on the device
        model = MixtralForCausalLM(cfg)
    model = model.to(torch.bfloat16) if a.precision == "bf16-params" else model.float()
    model.train()
    attn_used = model.config._attn_implementation
    experts_used = getattr(model.config, "_experts_implementation", a.experts_impl)
    opt = torch.optim.AdamW(model.parameters(), lr=float(tr.get("lr", 1e-3)),
                            betas=(float(tr.get("beta1", 0.9)), float(tr.get("beta2", 0.95))),
                            eps=float(tr.get("eps", 1e-8)), weight_decay=float(tr.get("weight_decay", 0.0)))
    grad_clip = float(tr.get("grad_clip", 1.0))

    tok = torch.from_numpy(np.fromfile(a.tokens, dtype=np.uint32).astype(np.int64)).to(dev)
    n_windows = (tok.numel() - 1) // L
    if n_windows < 1:
        sys.exit(f"{a.tokens}: fewer than seq+1 = {L + 1} tokens")

    def batch(s):
        rows = [tok[(w % n_windows) * L:(w % n_windows) * L + L + 1] for w in range(s * B, s * B + B)]
        w = torch.stack(rows)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def step(s):
        inp, tgt = batch(s)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            out = model(input_ids=inp, output_router_logits=True)
            ce = torch.nn.functional.cross_entropy(out.logits.view(-1, vocab).float(), tgt.view(-1))
            loss = ce + aux_coef * out.aux_loss.float()
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        return float(loss.detach())

    # Model FLOPs per trained token: 6 x active non-embedding parameters (forward 2, backward 4) plus causal
    # attention scores and P.V: 6 x layers x L x NH x D (half of the 12·layers·L·d of full attention).
    H, I, nl = int(m["hidden_size"]), int(m["intermediate_size"]), int(m["num_layers"])
    NH, NKV, E, K = int(m["num_heads"]), int(m["num_kv_heads"]), int(m["num_experts"]), int(m["top_k"])
    D = H // NH
    attn_params = H * NH * D + 2 * H * NKV * D + NH * D * H
    active = nl * (attn_params + H * E + K * 3 * H * I) + H * vocab  # + lm_head (the embedding gather is free)
    flops_per_token = 6 * active + 6 * nl * L * NH * D

    times = []
    losses = []
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    for s in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        losses.append(step(s))
        sync()
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({
        "tok_per_s": B * L / med, "step_time_s": med, "step_times_s": times, "losses": losses,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "attn": attn_used, "experts": experts_used,
        "params": sum(p.numel() for p in model.parameters()), "batch": B, "seq": L,
        "precision": a.precision, "flops_per_token": flops_per_token, "device": a.device,
        "active_params": active, "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
