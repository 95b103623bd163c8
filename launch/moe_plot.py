# Owns launch/moe_plot.py: run.dir/metrics.jsonl (DESIGN §6 Outputs) -> loss/router/expert_load/balance PNGs, report.md.
"""Plot a moe-train run from its metrics.jsonl.

Usage: python launch/moe_plot.py RUN_DIR [--out DIR] [--json]

Reads RUN_DIR/metrics.jsonl (one JSON object per line, DESIGN §6 "Outputs": training lines with `step`, `loss`,
`lr`, router stats, every log.every steps `expert_load` [layers][experts]; lines after an evaluation with
`eval_loss` and `eval_*`; an optional step-0 line with eval fields only) and writes to DIR (default RUN_DIR/plots):
  loss.png         train loss, eval loss, lr on a second axis
  router.png       aux_loss and z_loss (unscaled, as logged)
  expert_load.png  per MoE layer: each expert's share of routed top-k assignments at the steps with expert_load
  balance.png      load_imbalance, dropped_frac, expert_utilization
  router_layers.png  (when lines carry `router_layers`) per MoE layer over steps: imbalance, utilization, aux and z
                   weighted, churn, router logit norm, dropped fraction, entropy (moe_plot_layers.py)
  throughput.png   (when lines carry `model_tflops` / `mfu`) tok/s, model TFLOP/s per rank, MFU in %
  report.md        one-page summary: final/min loss, eval loss first -> last, healthy-range checks (whole model and
                   per MoE layer, the worst layer named), throughput, PNG links
  series.json      (with --json) the exact series plotted, so tests compare data rather than pixels
Files from an older moe-train (no router_layers, model_tflops or mfu) give the first four PNGs only.
Exit 2 on a missing metrics file, a malformed line (the message names file:line) or a file with no metrics.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

import moe_plot_layers as per_layer  # noqa: E402  (this directory: sys.path[0] when run as a script)

# Training-line series plotted, in the order they appear in series.json["train"].
TRAIN_KEYS = ("loss", "lr", "aux_loss", "z_loss", "load_imbalance", "dropped_frac", "expert_utilization")

HEALTH = per_layer.HEALTH  # healthy ranges of the last logged value (key, low, high, text)

PNGS = ("loss.png", "router.png", "expert_load.png", "balance.png")  # always drawn
LAYER_PNGS = ("router_layers.png", "throughput.png")  # drawn when the file carries their data


class MetricsError(Exception):
    """Bad input: the message names the file (and line); main turns it into exit 2."""


_number = per_layer.number


def read_metrics(path):
    """[(line number, dict)] of the non-blank lines of `path`; MetricsError names file:line for a bad one."""
    if not os.path.isfile(path):
        raise MetricsError(f"{path}: no such file (a moe-train run writes run.dir/metrics.jsonl)")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MetricsError(f"{path}:{n}: malformed metrics line: {exc.msg} at column {exc.colno}") from None
            if not isinstance(obj, dict):
                raise MetricsError(f"{path}:{n}: malformed metrics line: expected a JSON object, got "
                                   f"{type(obj).__name__}")
            step = obj.get("step")
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise MetricsError(f"{path}:{n}: malformed metrics line: key=step, got={step!r}, "
                                   f"allowed=an integer >= 0")
            for key in TRAIN_KEYS + ("eval_loss",):
                if key in obj and obj[key] is not None and not _number(obj[key]):
                    raise MetricsError(f"{path}:{n}: malformed metrics line: key={key}, got={obj[key]!r}, "
                                       f"allowed=a number")
            try:
                per_layer.check_line(path, n, obj)
            except per_layer.LayerMetricsError as exc:
                raise MetricsError(str(exc)) from None
            rows.append((n, obj))
    if not rows:
        raise MetricsError(f"{path}: no metrics lines")
    return rows


def _shares(path, n, load, layers):
    """[layer][expert] share of routed assignments from one expert_load value; checks its shape."""
    ok = (isinstance(load, list) and load and all(isinstance(r, list) and r and all(_number(c) and c >= 0 for c in r)
                                                  for r in load))
    ok = ok and len({len(r) for r in load}) == 1  # every MoE layer has the same experts
    if not ok:
        raise MetricsError(f"{path}:{n}: malformed metrics line: key=expert_load, got={load!r}, "
                           f"allowed=[[count >= 0 per expert] per MoE layer], "
                           f"every layer the same length")
    if layers is not None and [len(r) for r in load] != layers:
        raise MetricsError(f"{path}:{n}: malformed metrics line: key=expert_load, got=shape "
                           f"{[len(r) for r in load]}, allowed={layers} (as on earlier lines)")
    out = []
    for row in load:
        total = float(sum(row))
        out.append([c / total if total > 0 else 0.0 for c in row])  # a layer that routed nothing: all zero
    return out


def loss_coefs(run_dir):
    """{aux_loss: moe.aux_loss_coef, z_loss: moe.z_loss_coef} from RUN_DIR/config.yaml (the resolved config moe-train
    writes), {} without it. The guide's aux/z ranges are for the weighted terms; metrics.jsonl logs them unweighted."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return {}
    import yaml
    try:
        moe = (yaml.safe_load(open(path, encoding="utf-8")) or {}).get("moe") or {}
    except yaml.YAMLError as exc:
        raise MetricsError(f"{path}: not valid YAML ({exc})")
    out = {}
    for key, coef in (("aux_loss", "aux_loss_coef"), ("z_loss", "z_loss_coef")):
        if isinstance(moe.get(coef), (int, float)):
            out[key] = float(moe[coef])
    return out


def build_series(path, rows, coefs=None):
    """The exact data every plot and report.md draw from (also series.json). coefs: loss_coefs() — the health
    checks of aux_loss and z_loss use the weighted values (logged value × coefficient) when given."""
    train = {"step": []}
    train.update({k: [] for k in TRAIN_KEYS})
    ev = {"step": [], "eval_loss": []}
    el = {"step": [], "share": []}  # share[layer][i][expert], i indexing el["step"]
    layers = None
    for n, m in rows:
        if "loss" in m:
            train["step"].append(m["step"])
            for k in TRAIN_KEYS:
                train[k].append(m.get(k))
        if "eval_loss" in m:
            ev["step"].append(m["step"])
            ev["eval_loss"].append(m["eval_loss"])
        if "expert_load" in m:
            sh = _shares(path, n, m["expert_load"], layers)
            if layers is None:
                layers = [len(r) for r in sh]
                el["share"] = [[] for _ in sh]
            el["step"].append(m["step"])
            for li, r in enumerate(sh):
                el["share"][li].append(r)
    if not train["step"] and not ev["step"]:
        raise MetricsError(f"{path}: no training or eval lines (no line has `loss` or `eval_loss`)")
    coefs = coefs or {}
    rl = per_layer.layer_series(rows)
    tp = per_layer.throughput_series(rows)
    pngs = list(PNGS) + (["router_layers.png"] if rl else []) + (["throughput.png"] if per_layer.has_throughput(tp)
                                                                   else [])
    return {"metrics": path, "train": train, "eval": ev, "expert_load": el, "health": health(train, coefs),
            "router_layers": rl, "layer_health": per_layer.layer_health(rl, coefs), "throughput": tp,
            "coefs": coefs, "pngs": pngs}


def health(train, coefs):
    """One entry per HEALTH range: the last logged value of the key (× its loss coefficient for aux/z when known)
    and whether it is inside."""
    out = []
    for key, lo, hi, text in HEALTH:
        last = next(((s, v) for s, v in zip(reversed(train["step"]), reversed(train[key])) if v is not None), None)
        coef = coefs.get(key)
        if coef is not None:
            text = f"{text} (× moe.{key}_coef {coef:g})"
        entry = {"metric": key, "range": text, "low": lo, "high": hi, "step": None, "value": None, "inside": None,
                 "coef": coef}
        if last is not None:
            s, v = last
            v = v * coef if coef is not None else v
            entry.update(step=s, value=v, inside=per_layer.in_range(v, lo, hi))
        out.append(entry)
    return out


def _xy(steps, vals):
    pts = [(s, v) for s, v in zip(steps, vals) if v is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _band(ax, lo, hi):
    """Shade a healthy range on ax (unbounded sides clipped to the current view)."""
    y0, y1 = ax.get_ylim()
    ax.axhspan(lo if lo is not None else min(y0, 0.0), hi if hi is not None else y1, color="tab:green", alpha=0.08,
               label="healthy range")
    ax.set_ylim(y0, y1)


def plot_loss(s, out):
    t, e = s["train"], s["eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(*_xy(t["step"], t["loss"]), color="tab:blue", label="train loss")
    if e["step"]:
        ax.plot(e["step"], e["eval_loss"], "o-", color="tab:orange", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(*_xy(t["step"], t["lr"]), color="tab:gray", linestyle="--", label="lr")
    ax2.set_ylabel("learning rate")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right")
    ax.set_title("loss and learning rate")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_router(s, out):
    t = s["train"]
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for ax, key, color in ((axes[0], "aux_loss", "tab:purple"), (axes[1], "z_loss", "tab:red")):
        ax.plot(*_xy(t["step"], t[key]), color=color, label=key)
        ax.set_ylabel(f"{key} (unscaled)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes[1].set_xlabel("step")
    axes[0].set_title("router losses (before their coefficients)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_expert_load(s, out):
    el = s["expert_load"]
    nl = max(1, len(el["share"]))
    # expert_load rows are the MoE layers in order; router_layers names their decoder layer indices when present
    names = list(s["router_layers"]) if len(s["router_layers"]) == len(el["share"]) else None
    fig, axes = plt.subplots(nl, 1, figsize=(8, 2.2 + 2.0 * nl), squeeze=False)
    if not el["step"]:
        axes[0][0].text(0.5, 0.5, "no expert_load in metrics.jsonl", ha="center", va="center")
        axes[0][0].set_axis_off()
    for li, share in enumerate(el["share"]):
        ax = axes[li][0]
        grid = [list(col) for col in zip(*share)]  # [expert][logged step]
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_ylabel(f"layer {names[li]}\nexpert" if names else f"MoE layer {li}\nexpert")
        ax.set_yticks(range(len(grid)))
        ticks = list(range(len(el["step"])))
        stride = max(1, len(ticks) // 12)
        ax.set_xticks(ticks[::stride])
        ax.set_xticklabels([str(el["step"][i]) for i in ticks[::stride]])
        fig.colorbar(im, ax=ax, label="share")
    axes[-1][0].set_xlabel("step")
    axes[0][0].set_title("share of routed top-k assignments per expert")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_balance(s, out):
    t = s["train"]
    ranges = {h["metric"]: (h["low"], h["high"]) for h in s["health"]}
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    for ax, key, color in ((axes[0], "load_imbalance", "tab:red"), (axes[1], "dropped_frac", "tab:brown"),
                           (axes[2], "expert_utilization", "tab:green")):
        ax.plot(*_xy(t["step"], t[key]), color=color, label=key)
        if key in ranges:
            _band(ax, *ranges[key])
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes[2].set_xlabel("step")
    axes[0].set_title("router balance")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _fmt(v):
    return "—" if v is None else f"{v:.4g}"


def report(s, run_dir):
    t, e = s["train"], s["eval"]
    lines = [f"# moe-train run: `{os.path.abspath(run_dir)}`", "",
             f"Source: `{s['metrics']}`.", ""]
    loss = [(st, v) for st, v in zip(t["step"], t["loss"]) if v is not None]
    if loss:
        mn = min(loss, key=lambda p: p[1])
        lines += [f"- Training steps logged: {len(t['step'])} (steps {t['step'][0]} – {t['step'][-1]}).",
                  f"- Final train loss: {_fmt(loss[-1][1])} (step {loss[-1][0]}); "
                  f"min train loss: {_fmt(mn[1])} (step {mn[0]})."]
    else:
        lines.append("- No training lines.")
    if e["step"]:
        lines.append(f"- Eval loss: {_fmt(e['eval_loss'][0])} (step {e['step'][0]}) → {_fmt(e['eval_loss'][-1])} "
                     f"(step {e['step'][-1]}), {len(e['step'])} evaluations.")
    else:
        lines.append("- Eval loss: no evaluation lines.")
    lines += ["", "## Router health (last logged value)", "",
              "| metric | healthy range | last value | step | inside |", "|---|---|---|---|---|"]
    for h in s["health"]:
        verdict = "n/a (not logged)" if h["inside"] is None else ("yes" if h["inside"] else "**no**")
        lines.append(f"| `{h['metric']}` | {h['range']} | {_fmt(h['value'])} | "
                     f"{'—' if h['step'] is None else h['step']} | {verdict} |")
    lines += ["", "Ranges from the MoE monitoring practice of the seed documents, which report the weighted aux and "
              "z terms; moe-train logs `aux_loss` and `z_loss` unweighted (DESIGN §6), so their checks use the "
              "logged value × `moe.aux_loss_coef` / `moe.z_loss_coef` from the run's config.yaml when it is there.",
              "", "## Plots", ""]
    titles = {"loss.png": "train loss, eval loss and lr", "router.png": "aux_loss and z_loss",
              "expert_load.png": "each expert's share of routed assignments per MoE layer",
              "balance.png": "load imbalance, dropped fraction, utilization"}
    titles.update({"router_layers.png": "router health per MoE layer (imbalance, utilization, aux and z weighted, "
                                        "churn, logit norm, dropped fraction, entropy)",
                   "throughput.png": "tok/s, model TFLOP/s per rank, MFU"})
    lines += [f"- [{p}]({p}): {titles[p]}" for p in s["pngs"]]
    missing = [p for p in LAYER_PNGS if p not in s["pngs"]]
    if missing:
        lines.append(f"- not drawn: {', '.join(missing)} (metrics.jsonl lacks their keys: `router_layers` / "
                     "`model_tflops`, `mfu` come from a newer moe-train; older files give the four plots above)")
    lines += per_layer.report_lines(s, s["coefs"])
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="moe-train run.dir holding metrics.jsonl")
    ap.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    ap.add_argument("--json", action="store_true", help="also write series.json with the plotted series")
    a = ap.parse_args(argv)
    path = os.path.join(a.run_dir, "metrics.jsonl")
    try:
        s = build_series(path, read_metrics(path), loss_coefs(a.run_dir))
    except MetricsError as exc:
        print(f"moe_plot: {exc}", file=sys.stderr)
        return 2
    out = a.out or os.path.join(a.run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    plot_loss(s, os.path.join(out, "loss.png"))
    plot_router(s, os.path.join(out, "router.png"))
    plot_expert_load(s, os.path.join(out, "expert_load.png"))
    plot_balance(s, os.path.join(out, "balance.png"))
    if "router_layers.png" in s["pngs"]:
        per_layer.plot_router_layers(s["router_layers"], s["coefs"], os.path.join(out, "router_layers.png"), _band)
    if "throughput.png" in s["pngs"]:
        per_layer.plot_throughput(s["throughput"], os.path.join(out, "throughput.png"))
    for name in LAYER_PNGS:  # one left by an earlier plot of a newer file into this directory would mislead
        if name not in s["pngs"] and os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(report(s, a.run_dir) + "\n")
    if a.json:
        with open(os.path.join(out, "series.json"), "w", encoding="utf-8") as f:
            json.dump(s, f, indent=1)
    print(f"moe_plot: wrote {', '.join(s['pngs'])}, report.md{', series.json' if a.json else ''} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
