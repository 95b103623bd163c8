# Owns the fine-tuning benchmark: moe-train full / LoRA / QLoRA vs transformers + PEFT LoRA, same model, batch, CPU and threads.
"""moe-train fine-tuning benchmark (issue 11 item 10), one run, one machine, printed as a table of ratios.

Every measured process is a subprocess of this script, run one after the other:
  * moe-train, peft.method full | lora | qlora (NF4 + double quant), per train.precision asked (fp32, bf16);
  * transformers v5 + PEFT LoRA on the same model (this script re-run as a worker: --worker hf).
They train the same function: a random MixtralForCausalLM built from the dims on the command line is saved
(fp32 safetensors) and is moe-train's model.init_from and the transformers side's from_pretrained. Both see the
same token windows (window i = tokens[i*L : i*L+L+1], step s uses windows s*B .. s*B+B-1; no shuffling), the
same loss (CE + aux_coef * HF load-balancing aux loss, no z-loss), AdamW (betas 0.9/0.95, eps 1e-8, no weight
decay), grad clip 1.0, one optimizer step per iteration, and the same LoRA (r, alpha, targets; moe-train's
w1+w3 adapters share one A per expert exactly like PEFT's adapter on the fused gate_up_proj, so the trainable
parameter counts are equal — checked). The step-1 losses of the two LoRA runs are printed side by side (they
must agree: same function, B = 0 at init).

Figures per run:
  tok/s     median over the timed steps (after --warmup steps) of micro_batch*seq_len / step time; moe-train's
            from run.dir/metrics.jsonl (forward + backward + clip + AdamW), the worker's timed the same way.
  peak RSS  the child's ru_maxrss from wait4() — the kernel's high-water mark of resident memory (VmHWM) of the
            whole process, start-up and library code included. For the transformers side the RSS right after
            importing torch/transformers/peft (the runtime floor) is printed beside it.
  base      moe-train's frozen base-weight bytes, from its log line "base weights KIND (N on this rank)", and
            bytes per base parameter (base = q/k/v/o + every expert's w1/w2/w3; router, norms, embeddings and
            lm_head are not base linears).
Targets (issue 11): moe-train LoRA >= 2x transformers+PEFT tok/s; QLoRA base bytes <= 0.3x the bf16 base.

Threads: moe-train gets OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = --threads; the worker torch.set_num_threads.
The machine may be shared: before each run the busy CPUs of the last second are sampled (column "busy").

Run with the oracle venv's python:
  ~/.cache/moe-train/venv/bin/python bench/lora_bench.py --build build [--quick] [--json out.json]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME_BIN = "/usr/bin/time"  # GNU time (Debian package "time")
MiB = 1024.0 * 1024.0

# ----------------------------------------------------------------------------------------------- helpers


def busy_cpus(interval=1.0):
    """CPUs busy over `interval` seconds (all processes on the machine), from /proc/stat."""
    def snap():
        f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
        return sum(f), f[3] + f[4]
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return (os.cpu_count() or 1) * (1.0 - (i1 - i0) / max(1, t1 - t0))


def run_measured(cmd, env, log_path, timeout):
    """Run cmd under /usr/bin/time, stdout+stderr to log_path; return (exit code, peak RSS bytes, wall s).
    Peak RSS = GNU time's "%M" (the child's ru_maxrss = VmHWM at exit). A direct child of this python would
    inherit the RSS of its pre-exec copy of this process in ru_maxrss; /usr/bin/time's child is forked from a
    small process, so its figure is the program's own."""
    rss_file = Path(str(log_path) + ".maxrss")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run([TIME_BIN, "-f", "%M", "-o", str(rss_file)] + cmd, stdout=log,
                                stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.perf_counter() - t0
    try:
        rss = int(rss_file.read_text().strip().splitlines()[-1]) * 1024
    except (OSError, ValueError, IndexError):
        rss = 0
    return rc, rss, wall


def parse_human_bytes(s):
    v, unit = s.split()
    return float(v) * {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": MiB * 1024, "TiB": MiB * MiB}[unit]


def model_counts(a):
    """(all parameters, base-linear parameters, LoRA adapter parameters) of the benchmark model."""
    H, I, L, E, V = a.hidden, a.intermediate, a.layers, a.experts, a.vocab
    D = H // a.heads
    q, kv, o = (H, a.heads * D), (H, a.kv_heads * D), (a.heads * D, H)  # (in, out)
    attn = {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": o}
    base = L * (sum(i * out for i, out in attn.values()) + E * 3 * H * I)
    total = base + L * (E * H + 2 * H) + H + 2 * V * H
    r = a.r
    lora = 0
    for t in a.targets:
        if t in attn:
            lora += L * r * sum(attn[t])
    if "w1" in a.targets or "w3" in a.targets:
        rows = I * (("w1" in a.targets) + ("w3" in a.targets))
        lora += L * E * r * (H + rows)
    if "w2" in a.targets:
        lora += L * E * r * (I + H)
    return total, base, lora


# ----------------------------------------------------------------------------------------------- setup


def make_model_and_tokens(a, work):
    """Save the random HF Mixtral to work/hf and the token file to work/tokens.bin."""
    import numpy as np
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(a.seed)
    cfg = MixtralConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, num_local_experts=a.experts,
        num_experts_per_tok=a.top_k, max_position_embeddings=max(a.seq, 256), rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, initializer_range=0.02,
        tie_word_embeddings=False, attention_dropout=0.0, router_jitter_noise=0.0,
        router_aux_loss_coef=a.aux_coef, use_cache=False)
    model = MixtralForCausalLM(cfg).float()
    model.save_pretrained(str(work / "hf"))
    n = (a.warmup + a.steps) * a.batch * a.seq + 1
    np.random.default_rng(a.seed).integers(0, a.vocab, size=n, dtype=np.uint32).astype("<u4").tofile(
        str(work / "tokens.bin"))


OUR_TARGET = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj",
              "w1": "w1", "w2": "w2", "w3": "w3"}


def moe_train_config(a, work, method, precision, run_dir):
    cfg = {
        "run": {"name": f"lora_bench_{method}_{precision}", "dir": str(run_dir)},
        "model": {"init_from": str(work / "hf")},
        "moe": {"capacity_factor": 0.0, "aux_loss_coef": a.aux_coef, "aux_loss_form": "hf", "z_loss_coef": 0.0,
                "router_jitter": 0.0},
        "train": {"device": "cpu", "precision": precision, "seq_len": a.seq, "micro_batch": a.batch,
                  "grad_accum": 1, "steps": a.warmup + a.steps, "lr": a.lr, "min_lr": a.lr, "warmup_steps": 0,
                  "schedule": "constant", "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
                  "grad_clip": 1.0, "seed": a.seed},
        "data": {"format": "tokens", "path": str(work / "tokens.bin"), "dtype": "uint32", "shuffle": False},
        "log": {"every": 1, "stability_warnings": False},
    }
    if method != "full":
        cfg["peft"] = {"method": method, "r": a.r, "alpha": a.alpha, "dropout": 0.0, "targets": list(a.targets),
                       "train_router": False}
        if method == "qlora":
            cfg["peft"]["double_quant"] = True
    return cfg


def run_moe_train(a, work, method, precision):
    import yaml
    tag = f"{method}_{precision}"
    run_dir = work / f"run_{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg_path = work / f"{tag}.yaml"
    cfg_path.write_text(yaml.safe_dump(moe_train_config(a, work, method, precision, run_dir), sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    busy = busy_cpus()
    log = work / f"{tag}.log"
    rc, rss, wall = run_measured([str(a.moe_train), str(cfg_path)], env, log, a.timeout)
    text = log.read_text(errors="replace")
    if rc != 0:
        raise SystemExit(f"lora_bench: moe-train {cfg_path} exited {rc}; log tail:\n{text[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    timed = [r["tok_per_s"] for r in rows[a.warmup:]]
    res = {"side": "moe-train", "method": method, "precision": precision, "tok_per_s": statistics.median(timed),
           "step_tok_per_s": timed, "peak_rss_bytes": rss, "wall_s": wall, "busy_cpus_before": busy,
           "loss_step1": rows[0]["loss"], "aux_step1": rows[0].get("aux_loss"), "log": str(log)}
    m = re.search(r"base weights (.+?) \(([\d.]+ \w+) on this rank\)", text)
    if method != "full":
        if not m:
            raise SystemExit(f"lora_bench: no 'base weights' line in {log}")
        res["base_kind"], res["base_bytes"] = m.group(1), parse_human_bytes(m.group(2))
        m2 = re.search(r"([\d]+) trainable params", text)
        if m2:
            res["trainable_params"] = int(m2.group(1))
    return res


def run_hf(a, work, precision):
    tag = f"hf_{precision}"
    out = work / f"{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "hf", "--work", str(work),
           "--precision-worker", precision, "--worker-out", str(out)] + a.passthrough
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               OPENBLAS_NUM_THREADS=str(a.threads))
    busy = busy_cpus()
    log = work / f"{tag}.log"
    rc, rss, wall = run_measured(cmd, env, log, a.timeout)
    if rc != 0:
        raise SystemExit(f"lora_bench: transformers+PEFT worker ({precision}) exited {rc}; log tail:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")
    j = json.loads(out.read_text())
    j.update({"side": "transformers+PEFT", "method": "lora", "precision": precision, "peak_rss_bytes": rss,
              "wall_s": wall, "busy_cpus_before": busy, "log": str(log)})
    return j


# ----------------------------------------------------------------------------------------------- worker


def rss_now():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def hf_worker(a):
    """transformers v5 + PEFT LoRA training steps on work/hf; writes a JSON of the timings to --worker-out."""
    import numpy as np
    import torch
    import transformers
    import peft
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    floor = rss_now()
    work = Path(a.work)
    prec = a.precision_worker
    # bf16: the usual PEFT recipe on CPU: frozen base in bf16, adapters kept in fp32 by PEFT
    # (autocast_adapter_dtype), forward and loss under autocast(bfloat16); fp32: everything fp32.
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(work / "hf"), dtype=dtype, attn_implementation=a.hf_attn,
                                                 experts_implementation=a.hf_experts)
    attn_used = model.config._attn_implementation
    experts_used = getattr(model.config, "_experts_implementation", None)
    attn_t = [t for t in a.targets if t in ("q_proj", "k_proj", "v_proj", "o_proj")]
    params_t = []
    if "w1" in a.targets or "w3" in a.targets:
        if not ("w1" in a.targets and "w3" in a.targets):
            raise SystemExit("lora_bench: PEFT adapts the fused gate_up_proj: target both w1 and w3 or neither")
        params_t.append("mlp.experts.gate_up_proj")
    if "w2" in a.targets:
        params_t.append("mlp.experts.down_proj")
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=attn_t or None,
                     target_parameters=params_t or None)
    pm = get_peft_model(model, cfg)
    pm.train()
    trainable = [p for p in pm.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    adapter_dtypes = sorted({str(p.dtype) for p in trainable})
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    B, L, V = a.batch, a.seq, a.vocab
    tok = torch.from_numpy(np.fromfile(str(work / "tokens.bin"), dtype="<u4").astype(np.int64))

    def batch(s):
        w = torch.stack([tok[i * L:i * L + L + 1] for i in range(s * B, s * B + B)])
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def step(s):
        inp, tgt = batch(s)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            out = pm(input_ids=inp, output_router_logits=True)
            ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V).float(), tgt.reshape(-1))
            loss = ce + a.aux_coef * out.aux_loss.float()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return float(loss.detach()), float(ce.detach()), float(out.aux_loss.detach())

    times, losses, parts = [], [], []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        total, ce, aux = step(s)
        losses.append(total)
        parts.append((ce, aux))
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
    tps = [B * L / t for t in times]
    Path(a.worker_out).write_text(json.dumps({
        "tok_per_s": statistics.median(tps), "step_tok_per_s": tps, "loss_step1": losses[0], "losses": losses,
        "ce_step1": parts[0][0], "aux_step1": parts[0][1],
        "runtime_floor_rss_bytes": floor, "trainable_params": n_trainable, "adapter_dtypes": adapter_dtypes,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "attn": attn_used, "experts": experts_used,
    }))


# ----------------------------------------------------------------------------------------------- report


def fmt_mib(b):
    return f"{b / MiB:.1f}"


def ce1(r):
    """Step-1 cross-entropy (moe-train's metrics "loss" is the LM loss without the aux term)."""
    return r["ce_step1"] if "ce_step1" in r else r["loss_step1"]


def report(a, results, counts, machine):
    total, base_n, lora_n = counts
    lines = []
    p = lines.append
    p("lora_bench configuration")
    p(f"  model: Mixtral, hidden {a.hidden}, intermediate {a.intermediate}, {a.layers} layers, {a.experts} experts "
      f"top-{a.top_k}, heads {a.heads}/{a.kv_heads}, vocab {a.vocab}; {total:,} params, base linears {base_n:,}")
    p(f"  batch: micro_batch {a.batch} x seq_len {a.seq} = {a.batch * a.seq} tokens/step; {a.warmup} warm-up + "
      f"{a.steps} timed steps; threads {a.threads}")
    p(f"  LoRA: r {a.r}, alpha {a.alpha}, targets {','.join(a.targets)} ({lora_n:,} adapter params); router frozen; "
      f"QLoRA = NF4 block 64 + double quant")
    p(f"  optimizer: AdamW lr {a.lr} betas 0.9/0.95, grad clip 1.0, aux {a.aux_coef} (HF form), no z-loss")
    hf = [r for r in results if r["side"] != "moe-train"]
    if hf:
        h = hf[0]
        p(f"  transformers {h['transformers']} + peft {h['peft']} (torch {h['torch']}): attn {h['attn']}, experts "
          f"{h['experts']}; bf16 = bf16 base + fp32 adapters ({h['adapter_dtypes']}) under autocast")
    p(f"  machine: {machine}")
    p("")
    hdr = f"{'side':<18} {'method':<6} {'prec':<5} {'tok/s':>8} {'peak RSS MiB':>20} {'base MiB':>9} {'B/base param':>12} " \
          f"{'CE@1':>9} {'busy':>5}"
    p(hdr)
    p("-" * len(hdr))
    for r in results:
        base = f"{r['base_bytes'] / MiB:.2f}" if "base_bytes" in r else "-"
        bpp = f"{r['base_bytes'] / base_n:.3f}" if "base_bytes" in r else "-"
        rss = fmt_mib(r["peak_rss_bytes"])
        if "runtime_floor_rss_bytes" in r:
            rss += f" (floor {r['runtime_floor_rss_bytes'] / MiB:.0f})"
        p(f"{r['side']:<18} {r['method']:<6} {r['precision']:<5} {r['tok_per_s']:>8.0f} {rss:>20} {base:>9} {bpp:>12} "
          f"{ce1(r):>9.5f} {r['busy_cpus_before']:>5.2f}")
    p("")
    ratios = {}
    problems = []

    def get(side, method, prec):
        for r in results:
            if r["side"] == side and r["method"] == method and r["precision"] == prec:
                return r
        return None

    p("ratios")
    for prec in a.precisions:
        full, lora, qlora, hfr = (get("moe-train", "full", prec), get("moe-train", "lora", prec),
                                  get("moe-train", "qlora", prec), get("transformers+PEFT", "lora", prec))
        for name, x, y in (("lora/full", lora, full), ("qlora/full", qlora, full), ("qlora/lora", qlora, lora)):
            if x and y:
                k = f"{name}.{prec}"
                ratios[k + ".tok_per_s"] = x["tok_per_s"] / y["tok_per_s"]
                ratios[k + ".peak_rss"] = x["peak_rss_bytes"] / y["peak_rss_bytes"]
                p(f"  {prec} moe-train {name:<11} tok/s {ratios[k + '.tok_per_s']:.2f}x   peak RSS "
                  f"{ratios[k + '.peak_rss']:.2f}x")
        if lora and hfr:
            k = f"moe_lora/peft_lora.{prec}"
            ratios[k + ".tok_per_s"] = lora["tok_per_s"] / hfr["tok_per_s"]
            ratios[k + ".peak_rss"] = lora["peak_rss_bytes"] / hfr["peak_rss_bytes"]
            ok = "met" if ratios[k + ".tok_per_s"] >= 2.0 else "NOT met"
            rel = abs(ce1(lora) - ce1(hfr)) / abs(ce1(hfr))
            ratios[f"ce_step1_rel_diff.{prec}"] = rel
            p(f"  {prec} moe-train LoRA / transformers+PEFT LoRA: tok/s {ratios[k + '.tok_per_s']:.2f}x "
              f"(target >= 2x: {ok})   peak RSS {ratios[k + '.peak_rss']:.2f}x")
            p(f"       same function: step-1 CE {ce1(lora):.6f} vs {ce1(hfr):.6f} (rel {rel:.1e}); trainable params "
              f"{lora.get('trainable_params', 0):,} vs {hfr['trainable_params']:,}")
            if lora.get("trainable_params") != hfr["trainable_params"]:
                problems.append(f"{prec}: trainable params differ (moe-train {lora.get('trainable_params')}, "
                                f"PEFT {hfr['trainable_params']})")
            if rel > (1e-4 if prec == "fp32" else 2e-2):
                problems.append(f"{prec}: step-1 CE differs by {rel:.1e} relative: not the same function")
    q = next((r for r in results if r["method"] == "qlora" and "base_bytes" in r), None)
    if q:
        b16 = get("moe-train", "lora", "bf16")
        if b16 and "base_bytes" in b16:
            ref, how = b16["base_bytes"], "moe-train LoRA bf16 base, logged"
        else:
            ref, how = 2.0 * base_n, "2 bytes x base params"
        ratios["qlora_base/bf16_base"] = q["base_bytes"] / ref
        ok = "met" if ratios["qlora_base/bf16_base"] <= 0.3 else "NOT met"
        p(f"  QLoRA base bytes / bf16 base bytes ({how}): {ratios['qlora_base/bf16_base']:.3f}x (target <= 0.3x: {ok});"
          f" {q['base_bytes'] / base_n:.4f} bytes per base param")
        if ratios["qlora_base/bf16_base"] > 0.3:
            problems.append(f"QLoRA base {ratios['qlora_base/bf16_base']:.3f}x the bf16 base (> 0.3x)")
    for msg in problems:
        p(f"  PROBLEM: {msg}")
    return "\n".join(lines), ratios, problems


def machine_notes():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MiB / 1024
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, OPENBLAS_CORETYPE="
            f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(ROOT / "build"), help="build dir holding moe-train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1024, help="each expert's SwiGLU width")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4, help="micro_batch (one optimizer step per micro-batch)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,w1,w2,w3")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps after the warm-up")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    ap.add_argument("--methods", default="full,lora,qlora,hf", help="comma list of full, lora, qlora, hf")
    ap.add_argument("--hf-attn", default="sdpa", help="transformers attn_implementation")
    ap.add_argument("--hf-experts", default="grouped_mm", help="transformers experts_implementation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--quick", action="store_true",
                    help="small model, fp32 only, 1+3 steps: a smoke run in well under a minute")
    ap.add_argument("--json", help="also write the configuration, every run and the ratios to this JSON file")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when the two LoRA runs do not train the same function (step-1 CE, trainable "
                         "params) or QLoRA's base bytes exceed 0.3x bf16 (never on timings)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, run dirs)")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["hf", "make"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--precision-worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.hidden, a.intermediate, a.layers, a.experts, a.heads, a.kv_heads = 128, 256, 2, 4, 4, 4
        a.vocab, a.seq, a.batch, a.r, a.alpha, a.warmup, a.steps = 256, 128, 2, 8, 16.0, 1, 3
        if "bf16" in a.precisions and a.precisions == "fp32,bf16":
            a.precisions = "fp32"
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in a.targets if t not in OUR_TARGET]
    if bad:
        ap.error(f"--targets: unknown {bad}; use q_proj,k_proj,v_proj,o_proj,w1,w2,w3")
    a.precisions = [p for p in a.precisions.split(",") if p]
    a.methods = [m for m in a.methods.split(",") if m]
    if any(p not in ("fp32", "bf16") for p in a.precisions) or any(
            m not in ("full", "lora", "qlora", "hf") for m in a.methods):
        ap.error("--precisions: fp32,bf16; --methods: full,lora,qlora,hf")
    # What the worker needs to rebuild the same run (the model itself comes from --work/hf).
    a.passthrough = ["--threads", str(a.threads), "--hidden", str(a.hidden), "--intermediate", str(a.intermediate),
                     "--layers", str(a.layers), "--experts", str(a.experts), "--top-k", str(a.top_k), "--heads",
                     str(a.heads), "--kv-heads", str(a.kv_heads), "--seed", str(a.seed), "--vocab", str(a.vocab), "--seq", str(a.seq), "--batch",
                     str(a.batch), "--r", str(a.r), "--alpha", str(a.alpha), "--targets", ",".join(a.targets),
                     "--lr", str(a.lr), "--aux-coef", str(a.aux_coef), "--warmup", str(a.warmup), "--steps",
                     str(a.steps), "--hf-attn", a.hf_attn, "--hf-experts", a.hf_experts]
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.worker == "hf":
        hf_worker(a)
        return
    if a.worker == "make":
        make_model_and_tokens(a, Path(a.work))
        return
    a.moe_train = Path(a.build) / "moe-train"
    if not a.moe_train.exists():
        raise SystemExit(f"lora_bench: {a.moe_train} not found (cmake --build {a.build} --target moe-train)")
    if not os.access(TIME_BIN, os.X_OK):
        raise SystemExit(f"lora_bench: {TIME_BIN} (GNU time, Debian package 'time') is needed for the peak RSS")
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lora-bench."))
    try:
        # The model and tokens are made in a child, so that this process stays small (no torch here).
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "make", "--work", str(work)]
                       + a.passthrough, check=True, stdout=subprocess.DEVNULL)
        results = []
        for prec in a.precisions:
            for method in ("full", "lora", "qlora"):
                if method in a.methods:
                    r = run_moe_train(a, work, method, prec)
                    print(f"[{time.perf_counter() - t_start:5.0f}s] moe-train {method} {prec}: {r['tok_per_s']:.0f} tok/s,"
                          f" peak RSS {fmt_mib(r['peak_rss_bytes'])} MiB", file=sys.stderr)
                    results.append(r)
            if "hf" in a.methods:
                r = run_hf(a, work, prec)
                print(f"[{time.perf_counter() - t_start:5.0f}s] transformers+PEFT lora {prec}: {r['tok_per_s']:.0f} "
                      f"tok/s, peak RSS {fmt_mib(r['peak_rss_bytes'])} MiB", file=sys.stderr)
                results.append(r)
        counts = model_counts(a)
        machine = machine_notes()
        text, ratios, problems = report(a, results, counts, machine)
        print(text)
        print(f"\n(total {time.perf_counter() - t_start:.0f} s; work dir {work}{'' if a.keep else ', removed'})")
        if a.json:
            cfgd = {k: v for k, v in vars(a).items() if k not in ("passthrough", "worker", "work", "worker_out",
                                                                  "precision_worker", "moe_train")}
            Path(a.json).write_text(json.dumps({
                "config": cfgd, "machine": machine, "params_total": counts[0], "params_base": counts[1],
                "params_adapter": counts[2], "runs": results, "ratios": ratios, "problems": problems},
                indent=1, default=str))
        if a.check and problems:
            raise SystemExit(f"lora_bench --check: {len(problems)} problem(s), see above")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
