# Owns the end-to-end Q&A pipeline test: JSONL -> moe-prep build -> moe-train (mix, mask, packing, eval) -> export -> transformers.
"""launch/qa_demo.py prepare (a tokenizer trained by the `tokenizers` library, fortunes Q&A), moe-prep build of the
Q&A (ChatML, answer-only loss), held-out Q&A and general text, a short configs/qa_demo.yaml run, and the exported
model in transformers: eval lines before, during and after training; the export carries the tokenizer files byte
for byte and BOS/EOS ids (config.json, generation_config.json) equal to what transformers' AutoTokenizer reads from
them; apply_chat_template + generate run on it. The same run from the raw JSONL (data.format: jsonl, tokenized by
moe-train at start-up into run.dir/data) tokenizes byte for byte as moe-prep build and trains to the same losses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import hf_tiny

REPO = Path(__file__).resolve().parents[2]


def run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="2"), **kw)
    assert res.returncode == 0, f"{cmd[0]} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def test_qa_pipeline(tmp_path):
    b = hf_tiny.build_dir()
    d = tmp_path / "data"
    run([sys.executable, REPO / "launch/qa_demo.py", "prepare", d])
    for out, fmt, src in (("qa", "jsonl", "qa_train.jsonl"), ("qa_eval", "jsonl", "qa_eval.jsonl"),
                          ("general", "text", "general.txt")):
        extra = ["--chat-template", "auto", "--mask-prompt"] if fmt == "jsonl" else []
        run([b / "moe-prep", "build", "--tokenizer", d / "tokenizer", "--format", fmt, *extra, "--out", d / out,
             d / src])
    meta = json.loads((d / "qa" / "meta.json").read_text())
    assert meta["chat_template"] == "chatml-plain" and 0 < meta["num_loss_tokens"] < meta["num_tokens"]
    rd = tmp_path / "run"
    common = [REPO / "configs/qa_demo.yaml", "--set", "train.steps=4", "--set", "eval.every=2", "--set",
              "eval.batches=2", "--set", "train.warmup_steps=1", "--set", f"data.tokenizer={d}/tokenizer"]
    log = run([b / "moe-train", *common, "--set", f"run.dir={rd}",
               "--set", f"data.mix=[{{path: {d}/qa, weight: 0.8}}, {{path: {d}/general, weight: 0.2}}]",
               "--set", f"eval.data={d}/qa_eval"])
    # The raw JSONL path: general text as {"text"} records.
    (d / "general.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                             for t in (d / "general.txt").read_text().splitlines() if t))
    raw = tmp_path / "raw"
    run([b / "moe-train", *common, "--set", f"run.dir={raw}", "--set", "data.format=jsonl",
         "--set", f"data.mix=[{{path: {d}/qa_train.jsonl, weight: 0.8}}, {{path: {d}/general.jsonl, weight: 0.2}}]",
         "--set", f"eval.data={d}/qa_eval.jsonl", "--set", "checkpoint.export_hf=false"])
    for mine, prep in (("0-qa_train.jsonl", "qa"), ("2-qa_eval.jsonl", "qa_eval")):
        for f in ("tokens.bin", "loss_mask.bin", "docs.bin"):
            assert (raw / "data" / mine / f).read_bytes() == (d / prep / f).read_bytes(), f"{mine}/{f}"
    losses = lambda r: [(m["step"], m.get("loss"), m.get("eval_loss")) for m in hf_tiny.read_metrics(r)]  # noqa: E731
    assert losses(raw) == losses(rd), "the raw-JSONL run trained differently from the token-directory run"
    assert "exported the final model" in log
    evals = [m for m in hf_tiny.read_metrics(rd) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 2, 4], evals
    hf = rd / "hf"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (hf / f).read_bytes() == (d / "tokenizer" / f).read_bytes(), f"{f} not copied byte for byte"
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(hf))
    gen_cfg = json.loads((hf / "generation_config.json").read_text())
    cfg = json.loads((hf / "config.json").read_text())
    assert tok.eos_token_id is not None and gen_cfg["eos_token_id"] == tok.eos_token_id == cfg["eos_token_id"]
    assert gen_cfg["bos_token_id"] == tok.bos_token_id == cfg["bos_token_id"]  # None: this tokenizer has no BOS
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Matz's Law:"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
