# Owns the launch/moe_plot.py oracle: a real tiny moe-train run -> PNGs, series.json == metrics.jsonl, report.md, exit 2.
"""launch/moe_plot.py against the metrics.jsonl of a real run.

moe-train trains configs/tiny.yaml for 30 steps on byte-level fortunes text (log.every 5, held-out eval every 10
and at the start), then moe_plot.py --json runs on the run dir. Expected: four valid PNGs of sensible size,
series.json equal to what this test reads itself from metrics.jsonl (training steps and series, eval steps and
losses, expert-load shares = count / layer total, each summing to 1), report.md linking every PNG and stating
each healthy-range check for the last logged value; a malformed line exits 2 naming file:line; a missing file
exits 2.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import hf_tiny  # noqa: E402

TOOL = hf_tiny.REPO_ROOT / "launch" / "moe_plot.py"
FORTUNES = Path("/usr/share/games/fortunes")
PNGS = ("loss.png", "router.png", "expert_load.png", "balance.png")
TRAIN_KEYS = ("loss", "lr", "aux_loss", "z_loss", "load_imbalance", "dropped_frac", "expert_utilization")
# (key, inside(last value)) as the issue states the healthy ranges.
HEALTH = {
    "expert_utilization": lambda v: 0.7 <= v <= 1.0,
    "load_imbalance": lambda v: v < 2.5,
    "aux_loss": lambda v: 0.01 <= v <= 0.1,
    "z_loss": lambda v: v < 0.01,
}


def _fortunes_text():
    """Byte-level text: the plain fortune files (not the .dat indexes), in name order."""
    if not FORTUNES.is_dir():
        pytest.fail(f"{FORTUNES} not found: install the fortunes package (apt-get install fortunes)")
    files = sorted(p for p in FORTUNES.iterdir() if p.is_file() and p.suffix == "" and not p.is_symlink())
    data = b"".join(p.read_bytes() for p in files)
    assert len(data) > 300_000, len(data)
    return data


def _plot(run_dir, *extra):
    return subprocess.run([sys.executable, str(TOOL), str(run_dir), *extra], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("moe_plot")
    data = _fortunes_text()
    (work / "train.txt").write_bytes(data[:250_000])
    (work / "heldout.txt").write_bytes(data[-40_000:])  # other fortunes than the training text
    exe = hf_tiny.build_dir() / "moe-train"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build the project first (cmake --build build) or set MOE_BUILD_DIR")
    run = work / "run"
    sets = ["train.steps=30", "log.every=5", f"data.path={work / 'train.txt'}", f"eval.data={work / 'heldout.txt'}",
            "eval.every=10", "eval.at_start=true", "checkpoint.export_hf=false", f"run.dir={run}"]
    cmd = [str(exe), str(hf_tiny.REPO_ROOT / "configs" / "tiny.yaml")]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=work, env=env)
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return run


@pytest.fixture(scope="module")
def plotted(run_dir):
    res = _plot(run_dir, "--json")
    assert res.returncode == 0, res.stderr
    return run_dir / "plots"


def test_every_png_is_valid(plotted):
    for name in PNGS:
        path = plotted / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = mpimg.imread(str(path))
        h, w = img.shape[:2]
        assert 200 <= h <= 4000 and 300 <= w <= 4000, (name, img.shape)
        assert img.reshape(-1, img.shape[-1])[:, :3].std() > 0.01, f"{name} is blank"


def test_series_equal_metrics(run_dir, plotted):
    lines = hf_tiny.read_metrics(run_dir)
    s = json.loads((plotted / "series.json").read_text())
    train = [m for m in lines if "loss" in m]
    assert [m["step"] for m in train] == list(range(1, 31))
    assert s["train"]["step"] == [m["step"] for m in train]
    for key in TRAIN_KEYS:
        assert s["train"][key] == [m[key] for m in train], key

    ev = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in ev] == [0, 10, 20, 30]
    assert s["eval"]["step"] == [m["step"] for m in ev]
    assert s["eval"]["eval_loss"] == [m["eval_loss"] for m in ev]

    logged = [m for m in lines if "expert_load" in m]
    assert [m["step"] for m in logged] == [5, 10, 15, 20, 25, 30]
    assert s["expert_load"]["step"] == [m["step"] for m in logged]
    layers = len(logged[0]["expert_load"])
    assert layers == 2 and len(s["expert_load"]["share"]) == layers
    for li in range(layers):
        assert len(s["expert_load"]["share"][li]) == len(logged)
        for i, m in enumerate(logged):
            counts = m["expert_load"][li]
            got = s["expert_load"]["share"][li][i]
            assert len(got) == len(counts) == 4
            assert math.isclose(sum(got), 1.0, rel_tol=1e-12), (li, m["step"], got)
            for g, c in zip(got, counts):
                assert math.isclose(g, c / sum(counts), rel_tol=1e-12, abs_tol=1e-15), (li, m["step"], got, counts)


def test_report_links_pngs_and_states_health(run_dir, plotted):
    text = (plotted / "report.md").read_text()
    for name in PNGS:
        assert f"]({name})" in text, name
    lines = hf_tiny.read_metrics(run_dir)
    last = [m for m in lines if "loss" in m][-1]
    losses = [m["loss"] for m in lines if "loss" in m]
    assert f"{last['loss']:.4g}" in text and f"{min(losses):.4g}" in text
    ev = [m["eval_loss"] for m in lines if "eval_loss" in m]
    assert f"{ev[0]:.4g}" in text and f"{ev[-1]:.4g}" in text
    s = json.loads((plotted / "series.json").read_text())
    # aux and z are checked weighted by the run's coefficients (the guide's ranges are for the weighted terms).
    moe = yaml.safe_load((run_dir / "config.yaml").read_text())["moe"]
    coef = {"aux_loss": float(moe["aux_loss_coef"]), "z_loss": float(moe["z_loss_coef"])}
    for key, inside in HEALTH.items():
        row = next((r for r in text.splitlines() if r.startswith(f"| `{key}` |")), None)
        assert row is not None, f"no health row for {key}\n{text}"
        value = last[key] * coef.get(key, 1.0)
        want = inside(value)
        assert row.rstrip().endswith("| yes |" if want else "| **no** |"), (row, value)
        h = next(h for h in s["health"] if h["metric"] == key)
        assert h["inside"] == want and math.isclose(h["value"], value, rel_tol=1e-15) and h["step"] == 30, h


def test_out_dir(run_dir, tmp_path):
    res = _plot(run_dir, "--out", str(tmp_path / "elsewhere"))
    assert res.returncode == 0, res.stderr
    for name in PNGS + ("report.md",):
        assert (tmp_path / "elsewhere" / name).is_file(), name
    assert not (tmp_path / "elsewhere" / "series.json").exists()  # only with --json


@pytest.mark.parametrize("bad", ['{"step": 4, "loss": 5.1', '[1, 2, 3]', '{"step": 4, "loss": "high"}',
                                 '{"loss": 5.0}', '{"step": 4, "loss": 5.0, "expert_load": [[1, 2], [3]]}'])
def test_malformed_line_exits_2_naming_file_and_line(run_dir, tmp_path, bad):
    bad_run = tmp_path / "bad"
    bad_run.mkdir()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows[3] = bad  # line 4
    (bad_run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    res = _plot(bad_run, "--json")
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert f"{bad_run / 'metrics.jsonl'}:4:" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_missing_file_exits_2(tmp_path):
    res = _plot(tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert str(tmp_path / "metrics.jsonl") in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "plots").exists()


def test_empty_file_exits_2(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n")
    res = _plot(tmp_path)
    assert res.returncode == 2 and str(tmp_path / "metrics.jsonl") in res.stderr, res.stderr


def test_copied_run_plots_the_same(run_dir, plotted, tmp_path):
    # The tool reads only metrics.jsonl (and config.yaml for the loss coefficients): a copy elsewhere plots the same.
    shutil.copy(run_dir / "metrics.jsonl", tmp_path / "metrics.jsonl")
    shutil.copy(run_dir / "config.yaml", tmp_path / "config.yaml")
    assert _plot(tmp_path, "--json").returncode == 0
    a = json.loads((plotted / "series.json").read_text())
    b = json.loads((tmp_path / "plots" / "series.json").read_text())
    del a["metrics"], b["metrics"]
    assert a == b


def test_log_plots_runs_the_tool_at_the_end(tmp_path):
    """log.plots: true — moe-train runs launch/moe_plot.py itself after training: the same files as the tool makes."""
    (tmp_path / "train.txt").write_bytes(_fortunes_text()[:120_000])
    run = tmp_path / "run"
    cmd = [str(hf_tiny.build_dir() / "moe-train"), str(hf_tiny.REPO_ROOT / "configs" / "tiny.yaml")]
    for s in ("train.steps=10", "log.every=5", f"data.path={tmp_path / 'train.txt'}", "checkpoint.export_hf=false",
              f"run.dir={run}", "log.plots=true"):
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="2", MOE_PLOT_PYTHON=sys.executable))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "plots and report in" in res.stdout + res.stderr
    for name in PNGS + ("report.md",):
        assert (run / "plots" / name).stat().st_size > 0, name
