# Owns the per-layer oracle of launch/moe_plot.py: router_layers.png, throughput.png, per-layer report; old files.
"""launch/moe_plot.py's per-MoE-layer router health and throughput, on a real run and on written files.

The real run is test_moe_plot's (configs/tiny.yaml, 30 steps, log.every 5): router_layers.png and throughput.png must
be valid images of sensible size; series.json's router_layers and throughput must equal what this test reads from
metrics.jsonl itself; report.md's per-layer table must mark each layer's last values as this test's own reading of the
healthy ranges does. A written file with three MoE layers (decoder layers 1, 3, 5), a null churn and one unhealthy
layer must name that layer unhealthy and worst. The real file with the new keys removed (the format of an older
moe-train) must give exactly the four original PNGs and say why; a malformed router_layers exits 2 naming file:line.
"""
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import hf_tiny  # noqa: E402
from test_moe_plot import _plot, plotted, run_dir  # noqa: E402,F401  (the real run and its plot, as fixtures)

OLD_PNGS = {"loss.png", "router.png", "expert_load.png", "balance.png"}
NEW_PNGS = {"router_layers.png", "throughput.png"}
LAYER_KEYS = ("aux_loss", "z_loss", "expert_utilization", "load_imbalance", "routing_entropy", "dropped_frac",
              "router_logit_norm", "routing_churn")
NEW_KEYS = ("router_layers", "model_tflops", "mfu")
# The healthy ranges as the issue states them (aux and z weighted by their coefficients).
HEALTH = {
    "expert_utilization": lambda v: 0.7 <= v <= 1.0,
    "load_imbalance": lambda v: v < 2.5,
    "aux_loss": lambda v: 0.01 <= v <= 0.1,
    "z_loss": lambda v: v < 0.01,
}


def _pngs(d):
    return {p.name for p in d.iterdir() if p.suffix == ".png"}


def _valid_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(str(path))
    h, w = img.shape[:2]
    assert 300 <= h <= 4000 and 400 <= w <= 4000, (path.name, img.shape)
    assert img.reshape(-1, img.shape[-1])[:, :3].std() > 0.01, f"{path.name} is blank"


def _layer_row(text, layer):
    row = next((r for r in text.splitlines() if r.startswith(f"| {layer} | ")), None)
    assert row is not None, f"no per-layer row for layer {layer}\n{text}"
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _expected_layers(lines):
    """{layer: {key: [[step, value], ...]}} read straight from the metrics lines."""
    want = {}
    for m in lines:
        for e in m.get("router_layers", ()):
            per = want.setdefault(str(e["layer"]), {k: [] for k in LAYER_KEYS})
            for k in LAYER_KEYS:
                per[k].append([m["step"], e[k]])
    return want


def _header(text):
    row = next(r for r in text.splitlines() if r.startswith("| layer | step |"))
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _marks(text, layer):
    """{metric: (value text, inside?)} of a layer's report row, for the columns with a mark."""
    head = _header(text)
    out = {}
    for name, cell in zip(head, _layer_row(text, layer)):
        key = name.split("`")[1].split(" ")[0] if "`" in name else name
        if "✓" in cell or "✗" in cell:
            out[key] = ("✓" in cell)
    return out


# ---- the real run ---------------------------------------------------------------------------------------------

def test_new_pngs_are_valid(plotted):
    assert _pngs(plotted) == OLD_PNGS | NEW_PNGS
    for name in sorted(NEW_PNGS):
        _valid_png(plotted / name)


def test_router_layers_series_equal_metrics(run_dir, plotted):
    lines = hf_tiny.read_metrics(run_dir)
    logged = [m for m in lines if "router_layers" in m]
    # router_layers rides on the expert_load lines (every log.every steps and the last step)
    assert [m["step"] for m in logged] == [5, 10, 15, 20, 25, 30]
    assert [m["step"] for m in lines if "expert_load" in m] == [m["step"] for m in logged]
    layers = [e["layer"] for e in logged[0]["router_layers"]]
    assert len(layers) == len(logged[0]["expert_load"]) == 2 and layers == sorted(set(layers)), layers
    for m in logged:
        assert [e["layer"] for e in m["router_layers"]] == layers
        for li, e in enumerate(m["router_layers"]):
            # a layer's utilization and imbalance follow from its own expert_load row on the same line
            load = m["expert_load"][li]
            assert math.isclose(e["expert_utilization"], sum(c > 0 for c in load) / len(load), rel_tol=1e-12), e
            assert math.isclose(e["load_imbalance"], max(load) / (sum(load) / len(load)), rel_tol=1e-9), (e, load)
    # churn: nothing to compare with at the first logged line of the run, a share of tokens after it
    for e in logged[0]["router_layers"]:
        assert e["routing_churn"] is None, e
    for m in logged[1:]:
        for e in m["router_layers"]:
            assert 0.0 <= e["routing_churn"] <= 1.0, (m["step"], e)

    s = json.loads((plotted / "series.json").read_text())
    assert s["router_layers"] == _expected_layers(lines)
    assert list(s["router_layers"]) == [str(x) for x in layers]


def test_throughput_series_equal_metrics(run_dir, plotted):
    lines = hf_tiny.read_metrics(run_dir)
    train = [m for m in lines if "loss" in m]
    s = json.loads((plotted / "series.json").read_text())
    assert s["throughput"]["step"] == [m["step"] for m in train]
    for key in ("tok_per_s", "model_tflops", "mfu"):
        assert s["throughput"][key] == [m[key] for m in train], key
    assert all(m["model_tflops"] > 0 for m in train)
    assert all(m["mfu"] is None or m["mfu"] > 0 for m in train)


def test_report_marks_each_layer_as_the_ranges_say(run_dir, plotted):
    text = (plotted / "report.md").read_text()
    for name in NEW_PNGS:
        assert f"]({name})" in text, name
    lines = hf_tiny.read_metrics(run_dir)
    last = [m for m in lines if "router_layers" in m][-1]
    moe = yaml.safe_load((run_dir / "config.yaml").read_text())["moe"]
    coef = {"aux_loss": float(moe["aux_loss_coef"]), "z_loss": float(moe["z_loss_coef"])}
    unhealthy = {}
    for e in last["router_layers"]:
        cells = _layer_row(text, e["layer"])
        assert cells[1] == str(last["step"]), cells
        marks = _marks(text, e["layer"])
        assert set(marks) == set(HEALTH), (marks, cells)
        bad = []
        for key, inside in HEALTH.items():
            value = e[key] * coef.get(key, 1.0)
            assert marks[key] == inside(value), (e["layer"], key, value, cells)
            if not inside(value):
                bad.append(key)
        unhealthy[e["layer"]] = bad
        assert cells[-1] == ("healthy" if not bad else "**unhealthy**: " + ", ".join(bad)), cells
        for key in ("routing_entropy", "dropped_frac", "router_logit_norm", "routing_churn"):
            assert f"{e[key]:.4g}" in " ".join(cells), (key, e[key], cells)
    most = max(len(b) for b in unhealthy.values())
    named = [L for L, b in unhealthy.items() if f"orst layer: layer {L}" in text]
    assert len(named) == 1 and len(unhealthy[named[0]]) == most, (named, unhealthy)


# ---- written files ----------------------------------------------------------------------------------------------

def _write(run, lines, coefs=(0.01, 0.001)):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    if coefs:
        (run / "config.yaml").write_text(f"moe:\n  aux_loss_coef: {coefs[0]}\n  z_loss_coef: {coefs[1]}\n")


def _synthetic_lines():
    """20 steps, log every 5; MoE decoder layers 1, 3, 5 of which layer 3 is collapsing (utilization 0.5, imbalance
    3.6 at the end); aux 2.0 and z 4.0 unweighted (healthy only once weighted by 0.01 / 0.001); churn null at step 5."""
    lines = [{"step": 0, "eval_loss": 5.6}]
    for st in range(1, 21):
        m = {"step": st, "loss": 5.5 - 0.1 * st, "lr": 1e-3, "aux_loss": 2.0, "z_loss": 4.0, "load_imbalance": 1.4,
             "dropped_frac": 0.0, "expert_utilization": 1.0, "tok_per_s": 900.0 + st, "model_tflops": 0.25 + 0.001 * st,
             "mfu": 0.125 + 0.0005 * st}
        if st % 5 == 0:
            m["expert_load"] = [[30, 25, 25, 20], [70, 70, 0, 0], [25, 25, 25, 25]]
            m["router_layers"] = [
                {"layer": layer, "aux_loss": 2.0, "z_loss": 4.0,
                 "expert_utilization": 0.5 if layer == 3 else 1.0,
                 "load_imbalance": (2.0 + 0.08 * st if layer == 3 else 1.2), "routing_entropy": 0.9,
                 "dropped_frac": 0.01 * layer, "router_logit_norm": 1.5 + 0.01 * st + layer,
                 "routing_churn": None if st == 5 else round(0.2 / st + 0.001 * layer, 6)}
                for layer in (1, 3, 5)]
        lines.append(m)
    return lines


def test_written_file_names_the_unhealthy_layer(tmp_path):
    run = tmp_path / "run"
    lines = _synthetic_lines()
    _write(run, lines)
    res = _plot(run, "--json")
    assert res.returncode == 0, res.stderr
    out = run / "plots"
    assert _pngs(out) == OLD_PNGS | NEW_PNGS
    for name in sorted(NEW_PNGS):
        _valid_png(out / name)
    s = json.loads((out / "series.json").read_text())
    assert s["router_layers"] == _expected_layers(lines)
    assert list(s["router_layers"]) == ["1", "3", "5"]
    assert s["router_layers"]["3"]["routing_churn"][0] == [5, None]

    text = (out / "report.md").read_text()
    row3 = _layer_row(text, 3)
    assert row3[1] == "20" and row3[-1] == "**unhealthy**: expert_utilization, load_imbalance", row3
    assert _marks(text, 3) == {"aux_loss": True, "z_loss": True, "expert_utilization": False, "load_imbalance": False}
    for layer in (1, 5):
        assert _layer_row(text, layer)[-1] == "healthy"
        assert all(_marks(text, layer).values()), _marks(text, layer)
    assert "Worst layer: layer 3" in text and "Unhealthy layers: layer 3." in text
    # MFU is a fraction in metrics.jsonl and a percentage in the report
    assert f"{(0.125 + 0.0005 * 20) * 100:.4g} %" in text


def test_written_file_without_coefficients_checks_unweighted(tmp_path):
    # Without config.yaml the logged aux (2.0) and z (4.0) are checked as they are: outside their ranges everywhere.
    run = tmp_path / "run"
    _write(run, _synthetic_lines(), coefs=None)
    res = _plot(run)
    assert res.returncode == 0, res.stderr
    text = (run / "plots" / "report.md").read_text()
    for layer in (1, 3, 5):
        marks = _marks(text, layer)
        assert not marks["aux_loss"] and not marks["z_loss"], marks
    assert "Worst layer: layer 3" in text


def test_old_format_gives_exactly_the_old_pngs(run_dir, tmp_path):
    lines = hf_tiny.read_metrics(run_dir)
    old = [{k: v for k, v in m.items() if k not in NEW_KEYS} for m in lines]
    assert any("expert_load" in m for m in old) and any("tok_per_s" in m for m in old)
    run = tmp_path / "old"
    _write(run, old)
    out = tmp_path / "plots"
    # first a newer file into the same directory: its router_layers.png / throughput.png must not survive
    new = tmp_path / "new"
    _write(new, _synthetic_lines())
    assert _plot(new, "--out", str(out)).returncode == 0
    assert _pngs(out) == OLD_PNGS | NEW_PNGS
    res = _plot(run, "--json", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert _pngs(out) == OLD_PNGS
    for name in sorted(OLD_PNGS):
        _valid_png(out / name)
    s = json.loads((out / "series.json").read_text())
    assert s["router_layers"] == {} and sorted(s["pngs"]) == sorted(OLD_PNGS)
    text = (out / "report.md").read_text()
    assert "not drawn: router_layers.png, throughput.png" in text
    assert "no `router_layers`" in text
    for name in NEW_PNGS:
        assert f"]({name})" not in text, name


@pytest.mark.parametrize("bad", [
    {"router_layers": "layer 0"},
    {"router_layers": [{"aux_loss": 0.5}]},
    {"router_layers": [{"layer": 1, "routing_churn": "high"}]},
    {"router_layers": [{"layer": 1}, {"layer": 1}]},
    {"mfu": "30%"},
])
def test_malformed_router_layers_exit_2_naming_file_and_line(tmp_path, bad):
    lines = _synthetic_lines()
    lines[5].update(bad)  # line 6 of the file
    run = tmp_path / "bad"
    _write(run, lines)
    res = _plot(run, "--json")
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert f"{run / 'metrics.jsonl'}:6:" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (run / "plots").exists()
