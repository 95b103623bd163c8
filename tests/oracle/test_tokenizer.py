# Owns the tokenizer oracle (DESIGN §6 moe-prep): `moe-prep encode/decode` ids and text against the `tokenizers` library on tokenizers it trained on the fortunes corpus, in the GPT-2 / Llama-3 / Qwen2 / Llama-2 layouts.
"""contract: C6.tokenizer

Expected ids come only from `Tokenizer.from_file(DIR/tokenizer.json).encode(text, add_special_tokens).ids`
and expected text from `Tokenizer.decode(ids, skip_special_tokens)`. Every comparison is exact (whole id lists).

Texts: N_LINES distinct fortune lines (seeded sample) + tokenizer_zoo.CRAFTED + UNTRAINED in plain mode (one text per line),
N_TEXTS whole fortunes + crafted multi-line texts in --jsonl mode.
"""
import json
import os
import random
import subprocess

import pytest

import hf_tiny
import tokenizer_zoo as zoo
from tokenizers import Tokenizer

N_LINES = 4000
N_TEXTS = 600
KINDS = zoo.KINDS


def prep_exe():
    exe = hf_tiny.build_dir() / "moe-prep"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build it (cmake --build build --target moe-prep) or set MOE_BUILD_DIR")
    return str(exe)


def run_prep(args, data, threads=2):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.run([prep_exe()] + args, input=data, capture_output=True, timeout=300, env=env)


def encode_ours(tdir, texts, special, jsonl):
    if jsonl:
        data = "".join(json.dumps(t) + "\n" for t in texts).encode()
    else:
        assert not any("\n" in t for t in texts)
        data = "".join(t + "\n" for t in texts).encode()
    args = ["encode", "--tokenizer", str(tdir)] + (["--add-special-tokens"] if special else []) + (
        ["--jsonl"] if jsonl else [])
    r = run_prep(args, data)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) == len(texts) + 1, (len(out), len(texts))
    return [json.loads(line) for line in out[:-1]]


def decode_ours(tdir, id_lists, skip):
    data = "".join(json.dumps(ids) + "\n" for ids in id_lists).encode()
    r = run_prep(["decode", "--tokenizer", str(tdir)] + (["--skip-special-tokens"] if skip else []), data)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode("utf-8").split("\n")
    assert len(out) == len(id_lists) + 1
    return [json.loads(line) for line in out[:-1]]


def assert_same_ids(tok, texts, ours, special, what):
    bad = []
    for t, o in zip(texts, ours):
        ref = tok.encode(t, add_special_tokens=special).ids
        if ref != o:
            bad.append((t, ref, o))
    assert not bad, f"{what}: {len(bad)} of {len(texts)} texts differ; first: " + "; ".join(
        f"{t!r}: tokenizers {r} vs moe-prep {o}" for t, r, o in bad[:3])


@pytest.fixture(scope="session")
def tokenizers_dirs(tmp_path_factory):
    return zoo.build_zoo(tmp_path_factory.mktemp("tokenizer_zoo"))


@pytest.fixture(scope="session")
def lines():
    sample = zoo.sample([x for x in zoo.fortune_lines() if "\n" not in x], N_LINES, seed=12)
    assert len(sample) == N_LINES
    return sample + zoo.CRAFTED + zoo.UNTRAINED


@pytest.fixture(scope="session")
def texts():
    return zoo.sample(zoo.fortune_texts(), N_TEXTS, seed=13) + zoo.crafted_multiline() + zoo.CRAFTED[:40]


@pytest.mark.parametrize("special", [False, True], ids=["plain", "special"])
@pytest.mark.parametrize("kind", KINDS)
def test_encode_lines(tokenizers_dirs, lines, kind, special):
    tdir = tokenizers_dirs[kind]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    ours = encode_ours(tdir, lines, special, jsonl=False)
    assert_same_ids(tok, lines, ours, special, f"{kind} lines")


@pytest.mark.parametrize("special", [False, True], ids=["plain", "special"])
@pytest.mark.parametrize("kind", KINDS)
def test_encode_jsonl(tokenizers_dirs, texts, kind, special):
    tdir = tokenizers_dirs[kind]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    ours = encode_ours(tdir, texts, special, jsonl=True)
    assert_same_ids(tok, texts, ours, special, f"{kind} jsonl texts")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_round_trip(tokenizers_dirs, lines, texts, kind):
    """moe-prep decode == Tokenizer.decode on our ids, with and without skip_special_tokens. Round trip: decode(encode(t))
    gives t back exactly where the library's does, and for GPT-2's layout (no normalizer, no prefix space) on every
    text but those where lstrip/rstrip tokens absorbed whitespace."""
    tdir = tokenizers_dirs[kind]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    src = lines + texts
    ids = encode_ours(tdir, lines, False, jsonl=False) + encode_ours(tdir, texts, False, jsonl=True)
    with_specials = encode_ours(tdir, lines, True, jsonl=False)
    for skip in (False, True):
        all_ids = ids + with_specials
        ours = decode_ours(tdir, all_ids, skip)
        ref = tok.decode_batch(all_ids, skip_special_tokens=skip)
        bad = [(i, r, o) for i, (r, o) in enumerate(zip(ref, ours)) if r != o]
        assert not bad, f"{kind} decode skip={skip}: {len(bad)} differ; first: " + "; ".join(
            f"ids {all_ids[i][:20]}: tokenizers {r!r} vs moe-prep {o!r}" for i, r, o in bad[:3])
    back = decode_ours(tdir, ids, False)
    ours_ok = [b == s for b, s in zip(back, src)]
    lib_ok = [tok.decode(i, skip_special_tokens=False) == s for i, s in zip(ids, src)]
    assert ours_ok == lib_ok
    if kind == "gpt2":
        absorbing = ("<mask>", "<r>")
        assert all(ok for s, ok in zip(src, ours_ok) if not any(a in s for a in absorbing)), \
            [s for s, ok in zip(src, ours_ok) if not ok][:3]
    # add_prefix_space puts a space before every text; <unk> loses the characters outside the vocabulary
    if kind not in ("gpt2_prefix", "llama2_unk", "llama2_unk_nofuse"):
        assert sum(ours_ok) > 0.9 * len(ours_ok), f"{kind}: only {sum(ours_ok)} of {len(ours_ok)} texts round-trip"


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "llama2", "llama2_unk"])
def test_decode_random_ids(tokenizers_dirs, kind):
    """Arbitrary id sequences (partial UTF-8 byte tokens, <0xXX> runs that are not UTF-8, unknown ids, specials)."""
    tdir = tokenizers_dirs[kind]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    n = tok.get_vocab_size(with_added_tokens=True)
    rng = random.Random(5)
    ids = [[rng.randrange(n + 3) for _ in range(rng.randrange(1, 24))] for _ in range(3000)]
    ids += [[rng.randrange(3, 259) for _ in range(rng.randrange(1, 8))] for _ in range(1000)]  # byte tokens
    for skip in (False, True):
        ours = decode_ours(tdir, ids, skip)
        ref = tok.decode_batch(ids, skip_special_tokens=skip)
        bad = [(i, r, o) for i, (r, o) in enumerate(zip(ref, ours)) if r != o]
        assert not bad, f"{kind} skip={skip}: {len(bad)} differ; first: ids {ids[bad[0][0]]}: {bad[0][1]!r} vs {bad[0][2]!r}"


def test_threads_keep_order(tokenizers_dirs, lines):
    """Parallel encoding writes lines in input order: 1 and 4 threads give byte-identical output."""
    tdir = tokenizers_dirs["llama3"]
    data = "".join(t + "\n" for t in lines * 3).encode()
    one = run_prep(["encode", "--tokenizer", str(tdir)], data, threads=1)
    four = run_prep(["encode", "--tokenizer", str(tdir)], data, threads=4)
    assert one.returncode == 0 and four.returncode == 0
    assert one.stdout == four.stdout and one.stdout.count(b"\n") == 3 * len(lines)


def test_input_edges(tokenizers_dirs):
    """A last line without '\\n', empty lines, empty input."""
    tdir = tokenizers_dirs["gpt2"]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    r = run_prep(["encode", "--tokenizer", str(tdir)], b"ab\n\ncd")
    assert r.returncode == 0
    assert r.stdout.decode() == "".join(json.dumps(tok.encode(t, add_special_tokens=False).ids, separators=(",", ":"))
                                        + "\n" for t in ["ab", "", "cd"])
    r = run_prep(["encode", "--tokenizer", str(tdir)], b"")
    assert r.returncode == 0 and r.stdout == b""


@pytest.mark.parametrize("data,jsonl,line,needle", [
    (b"ok\nbad \xff byte\nok\n", False, 2, "not valid UTF-8"),
    (b"ok\n\xe4\xb8\n", False, 2, "not valid UTF-8"),
    (b'"ok"\nnot json\n"ok"\n', True, 2, "not JSON"),
    (b'"ok"\n"ok"\n{"text": "x"}\n', True, 3, "not a string"),
    (b'"ok"\n\n', True, 2, "not JSON"),
])
def test_bad_line(tokenizers_dirs, data, jsonl, line, needle):
    """A bad line stops moe-prep with exit 2, its line number and why; the lines before it are written."""
    tdir = tokenizers_dirs["gpt2"]
    r = run_prep(["encode", "--tokenizer", str(tdir)] + (["--jsonl"] if jsonl else []), data)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert f"line {line}:" in err and needle in err, err
    assert r.stdout.count(b"\n") == line - 1


def _mutated(tdir, tmp_path, fn):
    d = json.loads((tdir / "tokenizer.json").read_text())
    fn(d)
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))
    return tmp_path


REFUSALS = {
    "pre_whitespace": (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}),
                       "pre_tokenizer type 'Whitespace' is not supported"),
    "pre_digits_in_seq": (lambda d: d["pre_tokenizer"]["pretokenizers"].insert(
        0, {"type": "Digits", "individual_digits": True}), "type 'Digits' is not supported"),
    "norm_lowercase": (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer type 'Lowercase' is not supported"),
    "norm_nfkc": (lambda d: d.update(normalizer={"type": "NFKC"}), "normalizer type 'NFKC' is not supported"),
    "model_wordpiece": (lambda d: d["model"].update(type="WordPiece"), "model type 'WordPiece' is not supported"),
    "dropout": (lambda d: d["model"].update(dropout=0.1), "model.dropout"),
    "suffix": (lambda d: d["model"].update(end_of_word_suffix="</w>"), "model.end_of_word_suffix"),
    "post_bert": (lambda d: d.update(post_processor={"type": "BertProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0]}),
                  "post_processor type 'BertProcessing' is not supported"),
    "decoder_wordpiece": (lambda d: d.update(decoder={"type": "WordPiece", "prefix": "##", "cleanup": True}),
                          "decoder type 'WordPiece' is not supported"),
    "truncation": (lambda d: d.update(truncation={"max_length": 8, "strategy": "LongestFirst", "stride": 0,
                                                   "direction": "Right"}), "truncation"),
    "padding": (lambda d: d.update(padding={"strategy": "BatchLongest", "direction": "Right", "pad_id": 0,
                                             "pad_type_id": 0, "pad_token": "<s>", "pad_to_multiple_of": None}),
                "padding"),
    "regex_w": (lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(pattern={"Regex": r"\w+|\s+"}), "\\w"),
    "merge_oov": (lambda d: d["model"]["merges"].append(["zzzq", "qzzz"]), "model.merges"),
    "metaspace_first_after_split": (lambda d: d["pre_tokenizer"]["pretokenizers"].append(
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}), "prepend_scheme 'first'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_unsupported(tokenizers_dirs, tmp_path, case):
    """A tokenizer.json component moe-prep does not implement stops it with exit 2 naming the file and the
    component, never a silently different encoding."""
    fn, needle = REFUSALS[case]
    tdir = _mutated(tokenizers_dirs["llama3"], tmp_path, fn)
    r = run_prep(["encode", "--tokenizer", str(tdir)], b"hello\n")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "tokenizer.json" in err and needle in err, err
    assert r.stdout == b""


def test_missing_tokenizer_dir(tmp_path):
    r = run_prep(["encode", "--tokenizer", str(tmp_path / "nope")], b"x\n")
    assert r.returncode == 2 and "tokenizer.json" in r.stderr.decode()
