# Owns the `moe-prep build` oracle (DESIGN §6 C6.prep): token files against the `tokenizers` library and transformers' apply_chat_template (ids, loss masks, document offsets, meta.json), malformed-line reports, --strict, and bounded memory on a multi-MB input.
"""contract: C6.prep

Expected ids come only from the `tokenizers` library (`Tokenizer.encode(text, add_special_tokens)`) and from
transformers' `apply_chat_template(tokenize=True)`; expected masks from transformers: `return_assistant_tokens_mask`
with TRL's Qwen2.5 training template (ChatML), from rendering with and without each reply (Mixtral), and from
the `tokenizers` offsets of the prompt/completion boundary (pairs without a template).
"""
import json
import os
import re
import subprocess

import numpy as np
import pytest

import chat_refs as refs
import hf_tiny
import tokenizer_zoo as zoo
from tokenizers import Tokenizer


def prep_exe():
    exe = hf_tiny.build_dir() / "moe-prep"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build it (cmake --build build --target moe-prep) or set MOE_BUILD_DIR")
    return str(exe)


def build(tdir, out, fmt, inputs, *extra, threads=2, check=True, time_v=False):
    cmd = [prep_exe(), "build", "--tokenizer", str(tdir), "--out", str(out), "--format", fmt] + list(extra) + [
        str(i) for i in inputs]
    if time_v:
        cmd = ["/usr/bin/time", "-v"] + cmd
    r = subprocess.run(cmd, capture_output=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


def read_out(out):
    ids = np.fromfile(out / "tokens.bin", dtype="<u4").tolist()
    mask = np.fromfile(out / "loss_mask.bin", dtype="u1").tolist()
    starts = np.fromfile(out / "docs.bin", dtype="<u8").tolist()
    meta = json.loads((out / "meta.json").read_text())
    assert len(ids) == len(mask) == starts[-1] == meta["num_tokens"]
    assert len(starts) == meta["num_docs"] + 1 and starts[0] == 0 and starts == sorted(starts)
    assert sum(mask) == meta["num_loss_tokens"]
    assert not list(out.glob("*.tmp"))
    docs = [(ids[a:b], mask[a:b]) for a, b in zip(starts, starts[1:])]
    return docs, meta


def with_eos(ids, mask, eos, eos_mask):
    if eos is not None and (not ids or ids[-1] != eos):
        return ids + [eos], mask + [eos_mask]
    return ids, mask


def eos_of(tdir, tok):
    cfg = json.loads((tdir / "tokenizer_config.json").read_text())
    e = cfg.get("eos_token")
    return tok.token_to_id(e["content"] if isinstance(e, dict) else e) if e else None


def compare(docs, want, what):
    assert len(docs) == len(want), (len(docs), len(want))
    bad = [(i, d, w) for i, (d, w) in enumerate(zip(docs, want)) if tuple(d) != tuple(w)]
    assert not bad, f"{what}: {len(bad)} of {len(want)} documents differ; first #{bad[0][0]}: moe-prep {bad[0][1]} vs expected {bad[0][2]}"


@pytest.fixture(scope="session")
def zoo_dirs(tmp_path_factory):
    return zoo.build_zoo(tmp_path_factory.mktemp("prep_zoo"))


@pytest.fixture(scope="session")
def tdirs(tmp_path_factory, zoo_dirs):
    return refs.make_template_dirs(tmp_path_factory.mktemp("prep_dirs"), zoo_dirs)


@pytest.fixture(scope="session")
def pool():
    return refs.texts(zoo, 300, seed=6)


@pytest.mark.parametrize("kind", ["gpt2", "gpt2_prefix", "llama3", "qwen2", "llama2"])
def test_text_lines_are_encoded_with_specials_and_eos_C6_prep(zoo_dirs, tmp_path, kind):
    tdir = zoo_dirs[kind]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    eos = eos_of(tdir, tok)
    lines = zoo.sample([x for x in zoo.fortune_lines() if x], 1500, seed=3) + [x for x in zoo.CRAFTED if x]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(lines[:700]) + "\n\n\n" + "\n".join(lines[700:]) + "\n")  # empty lines: skipped
    out = tmp_path / "out"
    build(tdir, out, "text", [inp])
    docs, meta = read_out(out)
    want = []
    for t in lines:
        ids = tok.encode(t, add_special_tokens=True).ids
        want.append(with_eos(ids, [1] * len(ids), eos, 1))
    compare(docs, want, kind)
    assert meta["format_version"] == 1 and meta["format"] == "text" and meta["num_docs"] == len(lines)
    assert meta["skipped_lines"] == 0 and meta["eos_id"] == eos and meta["vocab_size"] == tok.get_vocab_size()
    assert meta["chat_template"] is None and meta["mask_prompt"] is False and meta["inputs"] == [str(inp)]


def pair_mask(tok, prompt, completion, add_special=True):
    """Mask of encode(prompt + completion): 0 for the post-processor's leading specials and the prompt's tokens,
    1 after (from the `tokenizers` offsets; None when a token straddles the boundary)."""
    e = tok.encode(prompt + completion, add_special_tokens=add_special)
    body = [i for i, s in enumerate(e.special_tokens_mask) if not s] or [len(e.ids)]
    mask = []
    for i, ((a, b), special) in enumerate(zip(e.offsets, e.special_tokens_mask)):
        if special and (i < body[0] or i > body[-1]):
            mask.append(0 if i < body[0] else 1)
        elif a < len(prompt) < b:
            return e.ids, None
        else:
            mask.append(1 if a >= len(prompt) and b > a else 0)
    return e.ids, mask


@pytest.mark.parametrize("kind", ["gpt2_prefix", "llama3", "qwen2"])
def test_jsonl_text_and_pairs_without_template_C6_prep(zoo_dirs, tmp_path, kind):
    tdir = zoo_dirs[kind]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    eos = eos_of(tdir, tok)
    lines = zoo.sample([x for x in zoo.fortune_lines() if x.strip()], 900, seed=4)
    recs, want, want_all, straddle = [], [], [], []
    for i in range(0, 900, 3):
        a, b, c = lines[i:i + 3]
        recs += [{"text": a + "\n" + b, "source": "x"}, {"question": a + "\n", "answer": b}, {"prompt": c, "completion": " " + a}]
        ids = tok.encode(a + "\n" + b, add_special_tokens=True).ids
        want.append(with_eos(ids, [1] * len(ids), eos, 1))
        want_all.append(want[-1])
        for p, q in ((a + "\n", b), (c, " " + a)):
            ids, mask = pair_mask(tok, p, q)
            want_all.append(with_eos(ids, [1] * len(ids), eos, 1))
            if mask is None:  # a token straddles the prompt/completion boundary: the line is refused
                straddle.append(len(recs) - (0 if q == " " + a else 1))  # its 1-based line
            else:
                want.append(with_eos(ids, mask, eos, 1))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    # the zoo directories have no chat template: auto means plain prompt + completion
    r = build(tdir, out, "jsonl", [inp], "--mask-prompt")
    docs, meta = read_out(out)
    compare(docs, want, kind)
    assert meta["chat_template"] is None and meta["mask_prompt"] is True
    reported = [int(n) for n, w in re.findall(r"^\S+:(\d+): (.*)$", r.stderr.decode(), re.M) if "straddles" in w]
    assert reported == straddle and meta["skipped_lines"] == len(straddle), (reported, straddle)
    out2 = tmp_path / "out2"
    build(tdir, out2, "jsonl", [inp])  # without --mask-prompt every token counts and nothing needs placing
    docs2, meta2 = read_out(out2)
    compare(docs2, want_all, kind + " unmasked")
    assert meta2["skipped_lines"] == 0


def chatml_expected(hf_train, conv, eos):
    r = hf_train.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return with_eos(list(r["input_ids"]), list(r["assistant_masks"]), eos, 0)


def mixtral_expected(hf, tok, conv, eos):
    text = hf.apply_chat_template(conv, tokenize=False)
    spans = []
    for k, m in enumerate(conv):
        if m["role"] == "assistant":
            spans.append((len(hf.apply_chat_template(conv[:k], tokenize=False)),
                          len(hf.apply_chat_template(conv[:k + 1], tokenize=False))))
    e = tok.encode(text, add_special_tokens=False)
    assert e.ids == hf.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    mask = [int(any(a <= s and f <= b for a, b in spans) and f > s) for s, f in e.offsets]
    return with_eos(e.ids, mask, eos, 0)


@pytest.mark.parametrize("kind", ["qwen25", "mixtral", "mixtral_legacy"])
def test_chat_ids_and_masks_equal_transformers_C6_prep(tdirs, pool, tmp_path, kind):
    tdir = tdirs[kind]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    eos = eos_of(tdir, tok)
    hf = refs.hf_tokenizer(tdir)
    convs = refs.conversations(pool, 250, seed=7) + refs.conversations(pool, 50, seed=8, end_with_user=True)
    if kind.startswith("mixtral"):
        # reply spans from the rendered text need a reply to start a token: the SentencePiece layouts glue a
        # reply's leading space to its first word, so contents starting with whitespace are left out here
        convs = [c for c in convs if not any(m["content"][:1].isspace() for m in c)]
        want = [mixtral_expected(hf, tok, c, eos) for c in convs]
    else:
        hf_train = refs.hf_tokenizer(tdir, template=refs.QWEN25_TRAINING)
        want = [chatml_expected(hf_train, c, eos) for c in convs]
    for c, (ids, _) in zip(convs, want):  # the ids are also the `tokenizers` ids of the rendered text
        text = hf.apply_chat_template(c, tokenize=False)
        assert with_eos(tok.encode(text, add_special_tokens=False).ids, [], eos, 0)[0] == ids
    inp = tmp_path / "chat.jsonl"
    inp.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    out = tmp_path / "out"
    build(tdir, out, "chat", [inp], "--mask-prompt", "--threads", "2")
    docs, meta = read_out(out)
    compare(docs, want, kind)
    assert meta["chat_template"] == ("chatml" if kind == "qwen25" else "mixtral") and meta["format"] == "chat"
    assert meta["num_loss_tokens"] == sum(sum(m) for _, m in want)


def test_pairs_with_a_template_are_two_message_chats_C6_prep(tdirs, tmp_path):
    tdir = tdirs["qwen25"]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    eos = eos_of(tdir, tok)
    hf_train = refs.hf_tokenizer(tdir, template=refs.QWEN25_TRAINING)
    lines = zoo.sample([x for x in zoo.fortune_lines() if x.strip()], 200, seed=9)
    recs = [{"question": a, "answer": b} if i % 2 else {"prompt": a, "completion": b}
            for i, (a, b) in enumerate(zip(lines[::2], lines[1::2]))]
    want = [chatml_expected(hf_train, [{"role": "user", "content": r.get("question", r.get("prompt"))},
                                       {"role": "assistant", "content": r.get("answer", r.get("completion"))}], eos)
            for r in recs]
    inp = tmp_path / "qa.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    build(tdir, out, "jsonl", [inp], "--mask-prompt")  # auto: the directory's Qwen2.5 template
    docs, meta = read_out(out)
    compare(docs, want, "qwen25 pairs")
    assert meta["chat_template"] == "chatml"


def test_malformed_lines_are_reported_and_skipped_C6_prep(tdirs, tmp_path):
    tdir = tdirs["qwen25"]
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text("\n".join([good, "{not json", good, "", json.dumps({"messages": []}), good]) + "\n")
    b.write_text("\n".join([json.dumps({"messages": [{"role": "user", "content": 3}]}), good,
                            json.dumps({"messages": [{"role": "tool", "content": "x"}]})]))  # no final newline
    out = tmp_path / "out"
    r = build(tdir, out, "chat", [a, b])
    err = r.stderr.decode()
    reports = re.findall(r"^(\S+):(\d+): (.*)$", err, re.M)
    assert [(f, int(n)) for f, n, _ in reports] == [(str(a), 2), (str(a), 5), (str(b), 1), (str(b), 3)], err
    docs, meta = read_out(out)
    assert meta["num_docs"] == 4 and meta["skipped_lines"] == 4 and meta["inputs"] == [str(a), str(b)]
    # --strict: the first malformed line is fatal (exit 2) and nothing is published
    out2 = tmp_path / "strict"
    r = build(tdir, out2, "chat", [a, b], "--strict", check=False)
    assert r.returncode == 2, r.stderr
    assert f"{a}:2: " in r.stderr.decode()
    assert not (out2 / "meta.json").exists() and not (out2 / "tokens.bin").exists() and not list(out2.glob("*.tmp"))
    # an existing output stays as it was when a later build fails
    before = (out / "tokens.bin").read_bytes()
    r = build(tdir, out, "chat", [a, b], "--strict", check=False)
    assert r.returncode == 2 and (out / "tokens.bin").read_bytes() == before and (out / "meta.json").exists()


def test_option_refusals_exit_2_C6_prep(tdirs, zoo_dirs, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("hello\n")
    for tdir, fmt, extra, words in [
            (zoo_dirs["qwen2"], "text", ["--mask-prompt"], "--mask-prompt"),
            (zoo_dirs["qwen2"], "text", ["--chat-template", "chatml"], "--chat-template"),
            (zoo_dirs["qwen2"], "chat", [], "chat_template"),
            (zoo_dirs["qwen2"], "chat", ["--chat-template", "none"], "none"),
            (tdirs["qwen25"], "jsonl", [str(tmp_path / "missing.jsonl")], "missing.jsonl")]:
        r = build(tdir, tmp_path / "o", fmt, [inp], *extra, check=False)
        assert r.returncode == 2 and words in r.stderr.decode(), (fmt, extra, r.stderr)


def test_multi_mb_input_streams_in_bounded_memory_C6_prep(tdirs, pool, tmp_path):
    """A chat file several times larger than the peak RSS allowed: ids of a sample of documents are checked, the
    peak RSS (GNU time) must stay well below the input size, and the progress line appears (every ~10 s when
    stderr is not a terminal, so at least at the start of a long run it may be absent: not asserted)."""
    tdir = tdirs["qwen25"]
    convs = refs.conversations([t for t in pool if len(t) > 20], 4000, seed=11)
    lines = [json.dumps({"messages": c}) for c in convs]
    inp = tmp_path / "big.jsonl"
    target = 96 << 20
    with open(inp, "w") as f:
        written = 0
        while written < target:
            for line in lines:
                f.write(line + "\n")
                written += len(line) + 1
    size = inp.stat().st_size
    out = tmp_path / "out"
    r = build(tdir, out, "chat", [inp], "--mask-prompt", time_v=True)
    err = r.stderr.decode()
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    summary = [x for x in err.splitlines() if x.startswith("moe-prep build:")][-1]
    print(f"\n{size / 1e6:.1f} MB input, peak RSS {rss_kb / 1024:.1f} MiB; {summary}")
    assert rss_kb * 1024 < size / 3, (rss_kb, size)
    meta = json.loads((out / "meta.json").read_text())
    n = meta["num_docs"]
    assert n == len(lines) * (n // len(lines)) and meta["skipped_lines"] == 0
    starts = np.memmap(out / "docs.bin", dtype="<u8", mode="r")
    ids = np.memmap(out / "tokens.bin", dtype="<u4", mode="r")
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    hf = refs.hf_tokenizer(tdir)
    eos = eos_of(tdir, tok)
    for i in list(range(0, n, max(1, n // 50))) + [n - 1]:
        text = hf.apply_chat_template(convs[i % len(convs)], tokenize=False)
        want = with_eos(tok.encode(text, add_special_tokens=False).ids, [], eos, 0)[0]
        assert ids[starts[i]:starts[i + 1]].tolist() == want, i
