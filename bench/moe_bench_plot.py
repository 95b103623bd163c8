# Owns bench/moe_bench_plot.py: moe_bench.csv (+ moe-costmodel's JSON) -> per-phase bars, measured vs predicted, and the extrapolated routing-overhead plots (docs/COST_MODEL.md).
"""Plot moe-bench's per-phase times and the cost model's predictions and extrapolation.

Usage: python bench/moe_bench_plot.py CSV [--model JSON] [--out DIR]

CSV is what moe-bench writes (one row per configuration; columns in bench/README_moe_bench.md). JSON is
`moe-costmodel CSV --json JSON` (or moe-bench's cost-model JSON). Writes to DIR (default: the CSV's directory):
  phases.png      per configuration, the 13 phases' median times stacked (forward then backward); with --model a
                  second bar beside each with the predicted phases; held-out configurations are highlighted
  prediction.png  (--model) predicted vs measured layer time, one point per configuration, held-out highlighted
  scaling.png     (--model) extrapolated routing-overhead share and tokens/s per GPU vs GPUs (log2 axis), one line
                  per network preset of the JSON, the bench machine's own point marked
Exit 2 naming the file (and line) on a missing or malformed CSV or JSON, or a JSON made from another CSV.
"""
import argparse
import csv
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

PHASES = ("route", "plan", "permute", "dispatch_a2a", "experts", "combine_a2a", "unpermute", "unpermute_bwd",
          "combine_a2a_bwd", "experts_bwd", "dispatch_a2a_bwd", "permute_bwd", "route_bwd")
DIMS = ("ep", "tokens", "hidden", "ffn", "experts", "topk", "capacity_factor", "repeats")
TAIL = ("fwd_ms", "bwd_ms", "layer_ms", "overhead_pct", "a2a_send_bytes_max", "a2a_recv_bytes_max", "rows_max",
        "held_out")
COLUMNS = DIMS + tuple(f"{p}{s}" for p in PHASES for s in ("_ms", "_p10_ms", "_p90_ms")) + TAIL


class PlotInputError(Exception):
    """Bad input: the message names the file (and line); main turns it into exit 2."""


def read_csv(path):
    """[dict] of the CSV's data rows (numbers as float, 'line' = 1-based line); PlotInputError names path:line."""
    if not os.path.isfile(path):
        raise PlotInputError(f"{path}: no such file (moe-bench --out DIR writes DIR/moe_bench.csv)")
    rows = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = None
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            fields = [x.strip() for x in fields]
            if header is None:
                header = fields
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise PlotInputError(f"{path}:{line}: header has no column {missing[0]}")
                continue
            if len(fields) != len(header):
                raise PlotInputError(f"{path}:{line}: {len(fields)} fields, the header has {len(header)}")
            row = {"line": line}
            for name in COLUMNS:
                text = fields[header.index(name)]
                try:
                    v = float(text)
                except ValueError:
                    v = float("nan")
                if not math.isfinite(v):
                    raise PlotInputError(f"{path}:{line}: column {name}: got '{text}', allowed: a finite number")
                row[name] = v
            if row["held_out"] not in (0.0, 1.0):
                raise PlotInputError(f"{path}:{line}: column held_out: got {row['held_out']:g}, allowed: 0 or 1")
            rows.append(row)
    if header is None:
        raise PlotInputError(f"{path}: empty file (expected moe-bench's CSV header and rows)")
    if not rows:
        raise PlotInputError(f"{path}: no data rows after the header")
    return rows


def read_model(path, rows):
    """moe-costmodel's JSON; checks that its samples are the CSV's rows (same count, line and dims)."""
    if not os.path.isfile(path):
        raise PlotInputError(f"{path}: no such file (moe-costmodel CSV --json PATH writes it)")
    try:
        with open(path, encoding="utf-8") as f:
            model = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlotInputError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(model, dict):
        raise PlotInputError(f"{path}: expected a JSON object from moe-costmodel")
    for key in ("samples", "extrapolation", "fitted_point", "validation"):
        if key not in model:
            raise PlotInputError(f"{path}: no '{key}' (not a moe-costmodel JSON?)")
    samples = model["samples"]
    if not isinstance(samples, list) or len(samples) != len(rows):
        raise PlotInputError(f"{path}: {len(samples) if isinstance(samples, list) else '?'} samples, the CSV has "
                             f"{len(rows)} rows: the JSON was made from another CSV")
    for s, r in zip(samples, rows):
        try:
            same = s["line"] == r["line"] and all(float(s[k]) == r[k] for k in ("ep", "tokens", "hidden", "topk"))
            for key in ("measured_ms", "predicted_ms"):
                for p in PHASES:
                    float(s[key][p])
            float(s["pred_layer_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlotInputError(f"{path}: sample {s.get('index') if isinstance(s, dict) else '?'}: "
                                 f"missing or bad field {exc}") from None
        if not same:
            raise PlotInputError(f"{path}: sample of CSV line {s['line']} does not match the CSV's line {r['line']}: "
                                 f"the JSON was made from another CSV")
    for t in model["extrapolation"]:
        if not isinstance(t, dict) or "net" not in t or not isinstance(t.get("rows"), list):
            raise PlotInputError(f"{path}: malformed extrapolation table")
        for row in t["rows"]:
            for key in ("gpus", "overhead_pct", "tok_s_gpu"):
                if not isinstance(row.get(key), (int, float)):
                    raise PlotInputError(f"{path}: network {t['net']}: a row lacks a number '{key}'")
    return model


def config_label(r):
    cf = "dl" if r["capacity_factor"] == 0 else f"{r['capacity_factor']:g}"
    return (f"ep{int(r['ep'])} T{int(r['tokens'])} H{int(r['hidden'])} E{int(r['experts'])} "
            f"k{int(r['topk'])} cf{cf}")


def _stack(ax, xs, series, width, offset, colors, hatch, labels):
    """Stacked bars of series[phase] = [value per configuration]; returns the tops."""
    bottom = [0.0] * len(xs)
    for i, p in enumerate(PHASES):
        ax.bar([x + offset for x in xs], series[p], width, bottom=bottom, color=colors[i], edgecolor="none",
               label=p if labels else None, alpha=0.55 if hatch else 1.0, hatch=hatch)
        bottom = [b + v for b, v in zip(bottom, series[p])]
    return bottom


def plot_phases(rows, model, out):
    """Top: phase ms stacked per configuration; bottom: the same as shares of the configuration's phase sum."""
    colors = plt.get_cmap("tab20")(range(len(PHASES)))
    n = len(rows)
    xs = list(range(n))
    meas = {p: [r[f"{p}_ms"] for r in rows] for p in PHASES}
    pred = {p: [float(s["predicted_ms"][p]) for s in model["samples"]] for p in PHASES} if model else None
    width = 0.4 if pred else 0.8
    fig, (ax, ax_share) = plt.subplots(2, 1, figsize=(max(8.0, 0.35 * n * (2 if pred else 1) + 2), 9), sharex=True)
    for axis, share in ((ax, False), (ax_share, True)):
        def scaled(series):
            if not share:
                return series
            tot = [sum(series[p][i] for p in PHASES) or 1.0 for i in range(n)]
            return {p: [100 * v / t for v, t in zip(series[p], tot)] for p in PHASES}

        top_m = _stack(axis, xs, scaled(meas), width, -width / 2 if pred else 0, colors, None, not share)
        top_p = _stack(axis, xs, scaled(pred), width, width / 2, colors, "//", False) if pred else top_m
        for x, r in zip(xs, rows):  # held-out configurations: a red frame around the pair
            if r["held_out"] == 1:
                top = max(top_m[x], top_p[x])
                axis.add_patch(plt.Rectangle((x - 0.45, 0), 0.9, top * 1.02, fill=False, edgecolor="red",
                                             linewidth=1.5))
    ax.set_ylabel("ms (median over repeats of the max over ranks)")
    ax_share.set_ylabel("share of the phase sum (%)")
    ax_share.set_xticks(xs)
    ax_share.set_xticklabels([config_label(r) for r in rows], rotation=90, fontsize=7)
    for tick, r in zip(ax_share.get_xticklabels(), rows):
        if r["held_out"] == 1:
            tick.set_color("red")
    title = "MoE layer phases per configuration"
    if pred:
        title += ": measured (left, solid) vs predicted (right, hatched); held-out in red"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_prediction(rows, model, out):
    fig, ax = plt.subplots(figsize=(6, 6))
    meas = [r["layer_ms"] for r in rows]
    pred = [float(s["pred_layer_ms"]) for s in model["samples"]]
    held = [r["held_out"] == 1 for r in rows]
    for flag, color, label in ((False, "tab:blue", "fitted"), (True, "tab:red", "held out")):
        xs = [m for m, h in zip(meas, held) if h == flag]
        ys = [p for p, h in zip(pred, held) if h == flag]
        if xs:
            ax.scatter(xs, ys, s=18, color=color, label=label)
    positive = [v for v in meas + pred if v > 0]
    lo, hi = min(positive), max(positive)
    ax.plot([lo, hi], [lo, hi], color="gray", linewidth=1, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured layer ms (fwd + bwd)")
    ax.set_ylabel("predicted layer ms (sum of phase models)")
    v = model["validation"]
    ax.set_title(f"{v['method'].replace('_', '-')} error: layer {v['layer_mape_mean']:.1f} % mean, "
                 f"{v['layer_mape_max']:.1f} % max", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_scaling(model, out):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for t in model["extrapolation"]:
        g = [row["gpus"] for row in t["rows"]]
        ax1.plot(g, [row["overhead_pct"] for row in t["rows"]], marker="o", label=t["net"])
        ax2.plot(g, [row["tok_s_gpu"] for row in t["rows"]], marker="o", label=t["net"])
    fp = model["fitted_point"]
    ax1.scatter([fp["gpus"]], [fp["overhead_pct"]], marker="*", s=150, color="black", label="bench machine (fitted)",
                zorder=3)
    ax2.scatter([fp["gpus"]], [fp["tok_s_gpu"]], marker="*", s=150, color="black", label="bench machine (fitted)",
                zorder=3)
    tg = model.get("target", {})
    dims = (f"H={tg.get('hidden')} I={tg.get('ffn')} E={tg.get('experts')} K={tg.get('topk')} "
            f"T={tg.get('tokens')}/GPU cf={tg.get('capacity_factor')}")
    for ax, ylabel in ((ax1, "routing overhead share of layer time (%)"),
                       (ax2, "tokens/s per GPU (one MoE layer fwd+bwd)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax2.set_yscale("log")
    if tg.get("compute_speedup", 1) != 1:
        dims += f", compute x{tg['compute_speedup']:g} vs the bench machine"
    fig.suptitle(f"extrapolated routing overhead, {dims}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="moe_bench.csv written by moe-bench")
    ap.add_argument("--model", help="moe-costmodel's JSON of the same CSV (predictions and extrapolation)")
    ap.add_argument("--out", help="output directory (default: the CSV's directory)")
    a = ap.parse_args(argv)
    try:
        rows = read_csv(a.csv)
        model = read_model(a.model, rows) if a.model else None
    except PlotInputError as exc:
        print(f"moe_bench_plot: {exc}", file=sys.stderr)
        return 2
    out = a.out or os.path.dirname(os.path.abspath(a.csv))
    os.makedirs(out, exist_ok=True)
    written = ["phases.png"]
    plot_phases(rows, model, os.path.join(out, "phases.png"))
    if model:
        plot_prediction(rows, model, os.path.join(out, "prediction.png"))
        plot_scaling(model, os.path.join(out, "scaling.png"))
        written += ["prediction.png", "scaling.png"]
    print(f"moe_bench_plot: wrote {', '.join(written)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
