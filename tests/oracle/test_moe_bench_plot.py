# Owns the bench/moe_bench_plot.py oracle: a synthetic moe_bench.csv from a known machine -> moe-costmodel JSON (alpha-beta recovered) -> PNGs produced and non-empty; bad input exits 2.
"""bench/moe_bench_plot.py and moe-costmodel on a small synthetic moe_bench.csv.

The CSV is generated here from a known machine (per-phase intercepts and rates, alpha-beta per all-to-all, no
noise), with every 4th row held out. Expected: moe-costmodel recovers alpha and 1/beta of each all-to-all and the
expert GEMM rate within 2 %, its held-out layer error is below 1 %, its JSON has every preset's table up to 1024
GPUs; the plot tool writes phases.png from the CSV alone and phases/prediction/scaling.png with the JSON, each a
readable PNG with more than one colour; a malformed CSV exits 2 naming file:line, a missing file exits 2, a JSON
of another CSV exits 2.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "bench" / "moe_bench_plot.py"
PHASES = ("route", "plan", "permute", "dispatch_a2a", "experts", "combine_a2a", "unpermute", "unpermute_bwd",
          "combine_a2a_bwd", "experts_bwd", "dispatch_a2a_bwd", "permute_bwd", "route_bwd")
# alpha (ms per peer), 1/beta (GB/s) of each all-to-all and the direction of its bytes.
A2A = {"dispatch_a2a": (0.03, 1.5, "send"), "combine_a2a": (0.02, 2.0, "recv"),
       "combine_a2a_bwd": (0.025, 1.2, "send"), "dispatch_a2a_bwd": (0.015, 2.5, "recv")}
EXPERTS_GFLOPS, EXPERTS_BWD_GFLOPS = 30.0, 25.0


def _costmodel():
    build = os.environ.get("MOE_BUILD_DIR")
    if not build:
        pytest.fail("MOE_BUILD_DIR is not set (ctest sets it to the build directory)")
    exe = Path(build) / "moe-costmodel"
    if not exe.is_file():
        pytest.fail(f"{exe} missing: cmake --build {build} --target moe-costmodel")
    return exe


def _phase_times(ep, T, H, I, E, K, rows, send, recv):
    """The known machine (ms)."""
    t = {
        "route": 0.01 + 2 * T * H * E / 20e9 * 1e3,
        "plan": 0.02 + 4e-6 * T * K + 1e-3 * E + 0.02 * (ep - 1),
        "experts": 0.03 + 6 * rows * H * I / (EXPERTS_GFLOPS * 1e9) * 1e3,
        "experts_bwd": 0.05 + 12 * rows * H * I / (EXPERTS_BWD_GFLOPS * 1e9) * 1e3,
        "route_bwd": 0.015 + 4 * T * H * E / 15e9 * 1e3,
    }
    for p in ("permute", "unpermute", "unpermute_bwd", "permute_bwd"):
        t[p] = 0.004 + 4 * T * K * H / 6e9 * 1e3
    for p, (alpha, gbps, direction) in A2A.items():
        nbytes = send if direction == "send" else recv
        t[p] = alpha * (ep - 1) + nbytes / (gbps * 1e9) * 1e3 if ep > 1 else 0.0
    return t


def write_csv(path):
    header = ["ep", "tokens", "hidden", "ffn", "experts", "topk", "capacity_factor", "repeats"]
    header += [f"{p}{s}" for p in PHASES for s in ("_ms", "_p10_ms", "_p90_ms")]
    header += ["fwd_ms", "bwd_ms", "layer_ms", "overhead_pct", "a2a_send_bytes_max", "a2a_recv_bytes_max",
               "rows_max", "held_out"]
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for ep in (1, 2, 4):
            for T in (128, 512, 2048):
                for K in (1, 2):
                    for H, E in ((64, 4), (128, 8)):
                        I = 2 * H
                        rows = T * K * (1.0 + 0.05 * ((n * 7) % 5))
                        send = T * K * H * 4 * (ep - 1) / ep
                        recv = send * (1.0 + 0.02 * ((n * 3) % 4))
                        t = _phase_times(ep, T, H, I, E, K, rows, send, recv)
                        fwd = sum(t[p] for p in PHASES[:7])
                        bwd = sum(t[p] for p in PHASES[7:])
                        layer = fwd + bwd
                        rec = [ep, T, H, I, E, K, 1.25, 5]
                        for p in PHASES:
                            rec += [repr(t[p]), repr(0.9 * t[p]), repr(1.1 * t[p])]
                        rec += [repr(fwd), repr(bwd), repr(layer),
                                repr(100 * (layer - t["experts"] - t["experts_bwd"]) / layer),
                                repr(send), repr(recv), repr(rows), 1 if n % 4 == 3 else 0]
                        w.writerow(rec)
                        n += 1
    return n


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=300)


def _check_png(path):
    assert path.is_file(), f"{path} not written"
    assert path.stat().st_size > 5000, f"{path}: {path.stat().st_size} bytes"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, img.shape
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 10, f"{path} is (nearly) one colour"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    work = tmp_path_factory.mktemp("moe_bench_plot")
    csv_path = work / "moe_bench.csv"
    n = write_csv(csv_path)
    model = work / "cost_model.json"
    md = work / "scaling.md"
    r = subprocess.run([str(_costmodel()), str(csv_path), "--json", str(model), "--markdown", str(md),
                        "--hidden", "1024", "--ffn", "2048", "--experts", "64", "--topk", "2", "--tokens", "2048",
                        "--compute-speedup", "100"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "held-out prediction error: layer " in r.stdout, r.stdout
    return {"work": work, "csv": csv_path, "rows": n, "model": model, "markdown": md}


def test_costmodel_recovers_the_known_machine(bench):
    j = json.loads(bench["model"].read_text())
    phases = {p["phase"]: p for p in j["fit"]["phases"]}
    for name, (alpha, gbps, _) in A2A.items():
        assert phases[name]["alpha_us"] == pytest.approx(alpha * 1e3, rel=0.02), name
        assert phases[name]["rate"] == pytest.approx(gbps, rel=0.02), name
    assert phases["experts"]["rate"] == pytest.approx(EXPERTS_GFLOPS, rel=0.02)
    assert phases["experts_bwd"]["rate"] == pytest.approx(EXPERTS_BWD_GFLOPS, rel=0.02)
    v = j["validation"]
    assert v["method"] == "held_out" and v["rows"] == bench["rows"] // 4
    assert v["layer_mape_max"] < 1.0
    nets = [t["net"] for t in j["extrapolation"]]
    assert nets == ["nvlink-ib", "nvlink-eth"]
    for t in j["extrapolation"]:
        assert [row["gpus"] for row in t["rows"]] == [8, 16, 32, 64, 128, 256, 512, 1024]
    # 64 experts on 8-GPU nodes: from 16 GPUs on the EP group spans nodes, Ethernet costs more than InfiniBand.
    ib, eth = (t["rows"] for t in j["extrapolation"])
    assert all(e["overhead_pct"] > i["overhead_pct"] for i, e in zip(ib[1:], eth[1:]))
    md = bench["markdown"].read_text()
    assert "| GPUs |" in md and "| 1024 |" in md


def test_plots_from_csv_alone(bench, tmp_path):
    r = _run(bench["csv"], "--out", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    _check_png(tmp_path / "phases.png")
    assert not (tmp_path / "scaling.png").exists()


def test_plots_with_model(bench, tmp_path):
    r = _run(bench["csv"], "--model", bench["model"], "--out", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("phases.png", "prediction.png", "scaling.png"):
        _check_png(tmp_path / name)


def test_bad_inputs_exit_2(bench, tmp_path):
    lines = bench["csv"].read_text().splitlines()
    fields = lines[3].split(",")
    fields[1] = "abc"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:3] + [",".join(fields)] + lines[4:]) + "\n")
    r = _run(bad, "--out", tmp_path)
    assert r.returncode == 2 and f"{bad}:4" in r.stderr and "tokens" in r.stderr, r.stderr
    missing = tmp_path / "none.csv"
    r = _run(missing, "--out", tmp_path)
    assert r.returncode == 2 and str(missing) in r.stderr, r.stderr
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:5]) + "\n")  # 4 rows: not the CSV the JSON came from
    r = _run(short, "--model", bench["model"], "--out", tmp_path)
    assert r.returncode == 2 and str(bench["model"]) in r.stderr and "another CSV" in r.stderr, r.stderr
    nojson = tmp_path / "model.json"
    nojson.write_text("{not json")
    r = _run(bench["csv"], "--model", nojson, "--out", tmp_path)
    assert r.returncode == 2 and str(nojson) in r.stderr, r.stderr
    # moe-costmodel on the bad CSV: exit 2 naming the line.
    r = subprocess.run([str(_costmodel()), str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"{bad}:4" in r.stderr, r.stderr
