# Owns the per-MoE-layer router health and throughput part of launch/moe_plot.py: healthy ranges, series, checks, plots.
"""Per-layer router health and throughput for launch/moe_plot.py.

metrics.jsonl (DESIGN §6) carries, on every log.every line (those with `expert_load`), `router_layers`: one object
per MoE layer {"layer": decoder layer index, "aux_loss", "z_loss" (unweighted), "expert_utilization",
"load_imbalance", "routing_entropy", "dropped_frac", "router_logit_norm", "routing_churn" (null at the first logged
line of a run and after a resume)}, and on every training line `model_tflops` (model TFLOP/s per rank) and `mfu`
(a fraction of the device's peak, null without a known peak). Files from before these keys existed have neither:
then nothing here is drawn and moe_plot.py writes its four original PNGs only.
"""
import math

# Healthy ranges of the last logged value (Surogate's MoE monitoring guide, /work/shared/seeds/002): (key, low, high,
# text); low/high None = unbounded; the upper bound is strict where the guide says "<". aux_loss and z_loss ranges are
# for the weighted terms (logged value × moe.aux_loss_coef / moe.z_loss_coef). Checked for the whole model
# (moe_plot.health) and for every MoE layer (layer_health).
HEALTH = (
    ("expert_utilization", 0.7, 1.0, "0.7 – 1.0"),
    ("load_imbalance", None, 2.5, "< 2.5"),
    ("aux_loss", 0.01, 0.1, "0.01 – 0.1"),
    ("z_loss", None, 0.01, "< 0.01"),
)

# The numbers of one router_layers entry, in series.json order (each a number or null).
LAYER_KEYS = ("aux_loss", "z_loss", "expert_utilization", "load_imbalance", "routing_entropy", "dropped_frac",
              "router_logit_norm", "routing_churn")

# Training-line throughput keys (series.json["throughput"]); the last two mark a file new enough for throughput.png.
THROUGHPUT_KEYS = ("tok_per_s", "model_tflops", "mfu")
NEW_THROUGHPUT_KEYS = ("model_tflops", "mfu")

# router_layers.png panels, row-major in a 4 × 2 grid: (key, y label). aux/z are drawn weighted (× coefficient).
LAYER_PANELS = (
    ("load_imbalance", "load imbalance (max/mean)"),
    ("expert_utilization", "expert utilization"),
    ("aux_loss", "aux_loss × coef"),
    ("z_loss", "z_loss × coef"),
    ("routing_churn", "routing churn"),
    ("router_logit_norm", "router logit norm"),
    ("dropped_frac", "dropped fraction"),
    ("routing_entropy", "routing entropy (/ log E)"),
)


class LayerMetricsError(Exception):
    """A malformed router_layers or throughput value; the message names file:line (moe_plot turns it into exit 2)."""


def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def in_range(v, lo, hi):
    """Whether v lies in a HEALTH range: finite, >= lo, and <= hi for closed ranges ("a – b": utilization 1.0 is
    ideal) or < hi for "< x" ranges (lo None)."""
    inside = math.isfinite(v)
    if lo is not None:
        inside = inside and v >= lo
    if hi is not None:
        inside = inside and (v <= hi if lo is not None else v < hi)
    return bool(inside)


def _bad(path, n, key, got, allowed):
    return LayerMetricsError(f"{path}:{n}: malformed metrics line: key={key}, got={got!r}, allowed={allowed}")


def check_line(path, n, m):
    """Type checks of the keys this module reads on one metrics line (number or null; router_layers' shape)."""
    for key in THROUGHPUT_KEYS:
        if key in m and m[key] is not None and not number(m[key]):
            raise _bad(path, n, key, m[key], "a number or null")
    if "router_layers" not in m:
        return
    rl = m["router_layers"]
    if not isinstance(rl, list) or not all(isinstance(e, dict) for e in rl):
        raise _bad(path, n, "router_layers", rl, "a list of one object per MoE layer")
    seen = set()
    for e in rl:
        layer = e.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise _bad(path, n, "router_layers[].layer", layer, "a decoder layer index >= 0")
        if layer in seen:
            raise _bad(path, n, "router_layers[].layer", layer, "each layer once per line")
        seen.add(layer)
        for key in LAYER_KEYS:
            if key in e and e[key] is not None and not number(e[key]):
                raise _bad(path, n, f"router_layers[layer {layer}].{key}", e[key], "a number or null")


def layer_series(rows):
    """{layer (str, ascending): {key: [[step, value or None], ...]}} over the lines with router_layers, in file order;
    a key a line does not carry is None there. The layers are those of the lines that have them."""
    out = {}
    for _, m in rows:
        for e in m.get("router_layers") or ():
            per = out.setdefault(str(e["layer"]), {k: [] for k in LAYER_KEYS})
            for k in LAYER_KEYS:
                per[k].append([m["step"], e.get(k)])
    return {k: out[k] for k in sorted(out, key=int)}


def throughput_series(rows):
    """{"step": [...], key: [...] for THROUGHPUT_KEYS} over the training lines (those with `loss`); mfu as logged
    (a fraction, None without a known peak), model_tflops None on files that predate it."""
    out = {"step": []}
    out.update({k: [] for k in THROUGHPUT_KEYS})
    for _, m in rows:
        if "loss" in m:
            out["step"].append(m["step"])
            for k in THROUGHPUT_KEYS:
                out[k].append(m.get(k))
    return out


def has_throughput(tp):
    return any(v is not None for k in NEW_THROUGHPUT_KEYS for v in tp[k])


def _last(points):
    """(step, value) of the last non-null point, or None."""
    return next(((s, v) for s, v in reversed(points) if v is not None), None)


def _severity(v, lo, hi):
    """How far outside its range v is, relative to the bound it crosses (0 inside; inf for a non-finite value)."""
    if not math.isfinite(v):
        return math.inf
    if lo is not None and v < lo:
        return (lo - v) / abs(lo) if lo else math.inf
    if hi is not None and v >= hi:
        return (v - hi) / abs(hi) if hi else math.inf
    return 0.0


def layer_health(layers, coefs):
    """Per MoE layer: the last logged value of every LAYER_KEYS series (aux/z × their coefficients when known) and, for
    the HEALTH keys, whether it is inside; plus the worst layer: most checks outside, then the largest relative
    distance outside, then the highest load imbalance, then the lower layer index."""
    ranges = {key: (lo, hi, text) for key, lo, hi, text in HEALTH}
    out = []
    for layer, per in layers.items():
        values, unhealthy, severity = {}, [], 0.0
        for key in LAYER_KEYS:
            last = _last(per[key])
            entry = {"step": None, "value": None, "inside": None}
            if last is not None:
                s, v = last
                if key in coefs:
                    v = v * coefs[key]
                entry.update(step=s, value=v)
                if key in ranges:
                    lo, hi, _ = ranges[key]
                    entry["inside"] = in_range(v, lo, hi)
                    if not entry["inside"]:
                        unhealthy.append(key)
                        severity += _severity(v, lo, hi)
            values[key] = entry
        steps = [p[0] for p in per["load_imbalance"]]
        out.append({"layer": layer, "step": steps[-1] if steps else None, "values": values, "unhealthy": unhealthy,
                    "severity": severity})
    worst = None
    if out:
        def rank(h):
            imb = h["values"]["load_imbalance"]["value"]
            return (len(h["unhealthy"]), h["severity"], imb if imb is not None and math.isfinite(imb) else -math.inf,
                    -int(h["layer"]))
        worst = max(out, key=rank)["layer"]
    return {"layers": out, "worst": worst}


# ---- plots ----------------------------------------------------------------------------------------------------

def _colors(n):
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]


def plot_router_layers(layers, coefs, out, band):
    """router_layers.png: LAYER_PANELS over steps, one line per MoE layer; healthy bands on the HEALTH keys (aux/z
    weighted by their coefficients when known, as their checks are); null points (churn before a first comparison)
    skipped. band(ax, lo, hi) shades a range (moe_plot._band)."""
    import matplotlib.pyplot as plt
    ranges = {key: (lo, hi) for key, lo, hi, _ in HEALTH}
    names = list(layers)
    colors = _colors(len(names))
    fig, axes = plt.subplots(4, 2, figsize=(12, 12), sharex=True)
    for ax, (key, label) in zip(axes.flat, LAYER_PANELS):
        coef = coefs.get(key)
        for name, color in zip(names, colors):
            pts = [(s, v * coef if coef is not None else v) for s, v in layers[name][key] if v is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", markersize=3, color=color, label=f"layer {name}")
        if key in ranges and ax.lines:
            band(ax, *ranges[key])
        if key in ("aux_loss", "z_loss"):
            label = f"{key} × {coef:g}" if coef is not None else f"{key} (unweighted: no config.yaml)"
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    pairs = [(h, lab) for h, lab in zip(handles, labels) if lab.startswith("layer ")]
    fig.legend([p[0] for p in pairs], [p[1] for p in pairs], loc="lower center", ncol=min(8, max(1, len(pairs))),
               frameon=False)
    fig.suptitle("router health per MoE layer (shaded: healthy range)")
    rows_of_legend = math.ceil(len(pairs) / 8)
    fig.tight_layout(rect=(0, 0.03 * rows_of_legend, 1, 0.97))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_throughput(tp, out):
    """throughput.png: tok/s (global batch) and model TFLOP/s per rank over steps; MFU in % on the second panel's
    right axis when any line has one."""
    import matplotlib.pyplot as plt

    def xy(key, scale=1.0):
        pts = [(s, v * scale) for s, v in zip(tp["step"], tp[key]) if v is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    axes[0].plot(*xy("tok_per_s"), color="tab:blue", label="tok/s")
    axes[0].set_ylabel("tokens / s")
    axes[0].legend(loc="upper right")
    axes[0].set_title("throughput")
    axes[1].plot(*xy("model_tflops"), color="tab:orange", label="model TFLOP/s per rank")
    axes[1].set_ylabel("model TFLOP/s per rank")
    handles, labels = axes[1].get_legend_handles_labels()
    if any(v is not None for v in tp["mfu"]):
        ax2 = axes[1].twinx()
        ax2.plot(*xy("mfu", 100.0), color="tab:red", linestyle="--", label="MFU")
        ax2.set_ylabel("MFU (%)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    axes[1].legend(handles, labels, loc="upper right")
    axes[1].set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---- report.md ------------------------------------------------------------------------------------------------

def _fmt(v):
    return "—" if v is None else f"{v:.4g}"


def report_lines(s, coefs):
    """The report.md section on per-layer health and throughput (links only to PNGs that were drawn)."""
    lh, pngs = s["layer_health"], s["pngs"]
    lines = ["", "## Router health per MoE layer (last logged values)", ""]
    if not lh["layers"]:
        return lines + ["metrics.jsonl has no `router_layers` (a file from an older moe-train, or a model without MoE "
                        "layers): no per-layer table and no router_layers.png; the four plots above are drawn as "
                        "before."] + _throughput_lines(s)
    ranges = {key: text for key, _, _, text in HEALTH}
    head = []
    for key in LAYER_KEYS:
        name = f"{key} × coef" if key in coefs else key
        head.append(f"`{name}` ({ranges[key]})" if key in ranges else f"`{name}`")
    lines += ["| layer | step | " + " | ".join(head) + " | verdict |", "|---" * (len(head) + 3) + "|"]
    for h in lh["layers"]:
        cells = []
        for key in LAYER_KEYS:
            e = h["values"][key]
            text = _fmt(e["value"])
            if e["value"] is not None and e["step"] != h["step"]:
                text += f" (step {e['step']})"
            if e["inside"] is True:
                text += " ✓"
            elif e["inside"] is False:
                text = f"**{text} ✗**"
            cells.append(text)
        verdict = "healthy" if not h["unhealthy"] else "**unhealthy**: " + ", ".join(h["unhealthy"])
        lines.append(f"| {h['layer']} | {h['step']} | " + " | ".join(cells) + f" | {verdict} |")
    worst = next(h for h in lh["layers"] if h["layer"] == lh["worst"])
    bad = [h["layer"] for h in lh["layers"] if h["unhealthy"]]
    if worst["unhealthy"]:
        lines += ["", f"**Worst layer: layer {worst['layer']}** — {len(worst['unhealthy'])} of {len(HEALTH)} checks "
                  f"outside: {', '.join(worst['unhealthy'])}. Unhealthy layers: "
                  f"{', '.join('layer ' + b for b in bad)}."]
    else:
        lines += ["", f"Worst layer: layer {worst['layer']} (highest load imbalance); every MoE layer is inside every "
                  "healthy range."]
    lines += ["", "✓ inside / ✗ outside the healthy range (the ranges above, applied to each layer alone); columns "
              "without a range are shown for reading. `routing_churn`: share of a fixed probe batch's tokens whose "
              "top-k expert set changed since the previous logged step (— before the first comparison of a run or a "
              "resume)."]
    if "router_layers.png" in pngs:
        lines += ["", "See [router_layers.png](router_layers.png)."]
    return lines + _throughput_lines(s)


def _throughput_lines(s):
    tp = s["throughput"]
    if "throughput.png" not in s["pngs"]:
        return ["", "## Throughput", "", "metrics.jsonl has no `model_tflops` / `mfu` (an older moe-train): no "
                "throughput.png."]
    lines = ["", "## Throughput", ""]
    for key, text, scale, unit in (("tok_per_s", "tokens/s", 1.0, ""), ("model_tflops", "model TFLOP/s per rank",
                                                                        1.0, ""), ("mfu", "MFU", 100.0, " %")):
        vals = [v for v in tp[key] if v is not None]
        if not vals:
            lines.append(f"- {text}: not logged" + (" (no peak known: set train.peak_tflops)" if key == "mfu" else
                                                   "") + ".")
            continue
        tail = vals[1:] if len(vals) > 1 else vals  # the first step of a process carries start-up costs
        mean = sum(tail) / len(tail)
        lines.append(f"- {text}: last {_fmt(vals[-1] * scale)}{unit}, mean without the first line "
                     f"{_fmt(mean * scale)}{unit}.")
    lines += ["", "See [throughput.png](throughput.png)."]
    return lines
