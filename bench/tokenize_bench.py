# Owns the tokenizer benchmark: moe-prep encode vs the `tokenizers` library's encode_batch, same corpus and threads.
"""Tokenization throughput (issue 12 item 1), one run, printed as a table of tokens/s and ratios.

For each tokenizer layout asked for (trained by tests/oracle/tokenizer_zoo.py with the `tokenizers` library on the
fortunes corpus, or --tokenizer DIR), on the same corpus (the fortune lines, --repeat times over):
  moe-prep   `moe-prep encode --tokenizer DIR` as a user runs it: a file on stdin, a file of JSON id arrays on
             stdout, OMP_NUM_THREADS = --threads. Wall time of the whole process (tokenizer.json load, reading,
             encoding, writing); the load alone (empty input) is printed beside it.
  tokenizers Tokenizer.from_file(DIR/tokenizer.json).encode_batch(lines, add_special_tokens=False) in a worker
             process with RAYON_NUM_THREADS = --threads; wall time of encode_batch alone (lines already in memory,
             no load, no output), so the comparison leans towards the library.
Both are the best of --runs runs. tok/s = tokens / seconds. Every run also checks the two produce the same ids
(a digest of every id list), so the figures compare equal work.

The machine may be shared: the busy CPUs of the last second are sampled before each run (column "busy").

Run with the oracle venv's python:
  ~/.cache/moe-train/venv/bin/python bench/tokenize_bench.py --build build [--threads N] [--repeat R] [--json out.json]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))


def busy_cpus(interval=1.0):
    """CPUs busy over `interval` seconds (all processes on the machine), from /proc/stat."""
    def snap():
        f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
        return sum(f), f[3] + f[4]
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return (os.cpu_count() or 1) * (1.0 - (i1 - i0) / max(1, t1 - t0))


def digest_lines(json_lines):
    """(tokens, sha1) of id lists given as JSON array lines."""
    h = hashlib.sha1()
    n = 0
    for line in json_lines:
        ids = json.loads(line)
        n += len(ids)
        h.update((",".join(map(str, ids)) + "\n").encode())
    return n, h.hexdigest()


def worker(tdir, corpus, runs):
    """The library side (run in its own process so RAYON_NUM_THREADS applies to its thread pool)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(tdir) / "tokenizer.json"))
    lines = Path(corpus).read_text(encoding="utf-8").split("\n")[:-1]
    best = None
    for _ in range(runs):
        t0 = time.perf_counter()
        enc = tok.encode_batch(lines, add_special_tokens=False)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    h = hashlib.sha1()
    n = 0
    for e in enc:
        n += len(e.ids)
        h.update((",".join(map(str, e.ids)) + "\n").encode())
    print(json.dumps({"seconds": best, "tokens": n, "sha1": h.hexdigest(), "lines": len(lines)}))


def run_moe_prep(exe, tdir, corpus, out, threads, runs):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [str(exe), "encode", "--tokenizer", str(tdir)]
    best = None
    for _ in range(runs):
        with open(corpus, "rb") as fin, open(out, "wb") as fout:
            t0 = time.perf_counter()
            r = subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE, env=env)
            dt = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"moe-prep failed ({r.returncode}): {r.stderr.decode()}")
        best = dt if best is None else min(best, dt)
    load = None
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, input=b"", capture_output=True, env=env, check=True)
        dt = time.perf_counter() - t0
        load = dt if load is None else min(load, dt)
    return best, load


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(ROOT / "build"), help="build directory holding moe-prep")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both sides")
    ap.add_argument("--repeat", type=int, default=4, help="copies of the fortune lines in the corpus")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (best is kept)")
    ap.add_argument("--kinds", default="llama3,gpt2,llama2", help="zoo layouts to measure (tests/oracle/tokenizer_zoo.py)")
    ap.add_argument("--tokenizer", help="measure this HF tokenizer directory instead of the zoo")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", nargs=2, metavar=("DIR", "CORPUS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], a.runs)
        return

    import tokenizer_zoo as zoo
    exe = Path(a.build) / "moe-prep"
    if not exe.exists():
        sys.exit(f"{exe} not found: cmake --build {a.build} --target moe-prep")
    with tempfile.TemporaryDirectory(prefix="tokenize_bench_") as tmp:
        tmp = Path(tmp)
        if a.tokenizer:
            dirs = {Path(a.tokenizer).name: Path(a.tokenizer)}
        else:
            print("training the tokenizers (tokenizers library, fortunes corpus) ...", flush=True)
            all_dirs = zoo.build_zoo(tmp / "zoo")
            dirs = {k: all_dirs[k] for k in a.kinds.split(",")}
        lines = [x for x in zoo.fortune_lines() if "\r" not in x] * a.repeat
        corpus = tmp / "corpus.txt"
        corpus.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {len(lines)} lines, {mb:.1f} MB (fortune lines x{a.repeat}); threads {a.threads}; "
              f"best of {a.runs} runs", flush=True)
        hdr = (f"{'tokenizer':<10} {'tokens':>9} {'busy':>5} | {'moe-prep s':>10} {'(load s)':>8} {'Mtok/s':>7} | "
               f"{'tokenizers s':>12} {'Mtok/s':>7} | {'ratio':>6}")
        print(hdr)
        print("-" * len(hdr))
        results = []
        for kind, tdir in dirs.items():
            busy = busy_cpus()
            out = tmp / f"out_{kind}.txt"
            ours_s, load_s = run_moe_prep(exe, tdir, corpus, out, a.threads, a.runs)
            ours_n, ours_h = digest_lines(out.read_text().split("\n")[:-1])
            env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="true")
            r = subprocess.run([sys.executable, __file__, "--runs", str(a.runs), "--worker", str(tdir), str(corpus)],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                sys.exit(f"tokenizers worker failed: {r.stderr}")
            lib = json.loads(r.stdout.strip().splitlines()[-1])
            if (lib["tokens"], lib["sha1"]) != (ours_n, ours_h):
                sys.exit(f"{kind}: moe-prep and tokenizers disagree on the ids ({ours_n} vs {lib['tokens']} tokens)")
            ours_tps, lib_tps = ours_n / ours_s, lib["tokens"] / lib["seconds"]
            row = {"tokenizer": kind, "lines": len(lines), "tokens": ours_n, "threads": a.threads, "busy_cpus": busy,
                   "moe_prep_s": ours_s, "moe_prep_load_s": load_s, "moe_prep_tok_s": ours_tps,
                   "tokenizers_s": lib["seconds"], "tokenizers_tok_s": lib_tps, "ratio": ours_tps / lib_tps}
            results.append(row)
            print(f"{kind:<10} {ours_n:>9} {busy:>5.1f} | {ours_s:>10.3f} {load_s:>8.3f} {ours_tps / 1e6:>7.2f} | "
                  f"{lib['seconds']:>12.3f} {lib_tps / 1e6:>7.2f} | {ours_tps / lib_tps:>5.2f}x", flush=True)
        print("ratio = moe-prep tok/s / tokenizers encode_batch tok/s (ids checked equal)")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
