# Owns the tokenizers that the tokenizer oracle and bench train with the `tokenizers` library on real English text (the Debian `fortunes` package), in the layouts of GPT-2, Llama-3, Qwen2 and Llama-2/Mistral, plus the texts.
"""Tokenizer zoo for tests/oracle/test_tokenizer.py and bench/tokenize_bench.py.

Every tokenizer here is trained by the `tokenizers` library itself (BpeTrainer, vocab VOCAB) on the lines of
/usr/share/games/fortunes/* (plain files; .dat/.u8 skipped) plus the crafted texts below, then given a family's
pipeline:

  gpt2              ByteLevel pre-tokenizer (GPT-2 regex), ByteLevel decoder and post-processor
  gpt2_prefix       the same with add_prefix_space and a TemplateProcessing "<s> $A </s>"
  llama3            NFC; Split(Llama-3 regex, isolated) + ByteLevel(use_regex=False); ignore_merges (and a
                    vocabulary word no merge makes, UNTRAINED_WORD);
                    post_processor Sequence[ByteLevel, TemplateProcessing "<s> $A"]
  qwen2             the llama3 model with Qwen2's regex (\\p{N} one digit at a time), ByteLevel post-processor,
                    merges in the legacy "a b" string form
  llama2            SentencePiece-style BPE: byte_fallback, fuse_unk, <unk>; normalizer Prepend("▁") +
                    Replace(" ", "▁"); decoder Replace + ByteFallback + Fuse + Strip(1 left); "<s> $A"
  llama2_metaspace  the llama2 model behind the newer layout: no normalizer, Metaspace(prepend_scheme first,
                    split false)
  llama2_unk        the llama2 model without byte_fallback: unknown characters become <unk>, fused
  llama2_unk_nofuse the same with fuse_unk false

All carry added tokens: <s>, </s>, <|im_start|>, <|im_end|> (special), <mask> (special, lstrip), and the
non-special "[sw]" (single_word), "<r>" (rstrip), "hello world" (normalized=True), and a tokenizer_config.json
naming bos/eos.
"""
import copy
import json
import os
import random
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

FORTUNES = Path("/usr/share/games/fortunes")
VOCAB = 6000
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
KINDS = ["gpt2", "gpt2_prefix", "llama3", "qwen2", "llama2", "llama2_metaspace", "llama2_unk", "llama2_unk_nofuse"]
BYTE_LEVEL_KINDS = {"gpt2", "gpt2_prefix", "llama3", "qwen2"}


def fortune_files():
    if not FORTUNES.is_dir():
        raise RuntimeError(f"{FORTUNES} not found: install the Debian package `fortunes` (launch/setup.sh does)")
    files = sorted(p for p in FORTUNES.iterdir()
                   if p.is_file() and not p.name.endswith((".dat", ".u8")))
    if not files:
        raise RuntimeError(f"no fortune files in {FORTUNES}")
    return files


def fortune_lines():
    """Every line of every fortune file, in file order (text decoded as UTF-8, bad bytes replaced)."""
    out = []
    for f in fortune_files():
        out += f.read_bytes().decode("utf-8", "replace").split("\n")
    return out


def fortune_texts():
    """Whole fortunes (the '%'-separated entries), newlines kept."""
    out = []
    for f in fortune_files():
        for t in f.read_bytes().decode("utf-8", "replace").split("\n%\n"):
            if t.strip():
                out.append(t)
    return out


def sample(items, n, seed):
    items = list(dict.fromkeys(items))  # unique, first occurrence order
    random.Random(seed).shuffle(items)
    return items[:n]


def _trainer(special_tokens, **kw):
    return trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=special_tokens, show_progress=False, **kw)


def _add_extra_tokens(tok):
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("[sw]", single_word=True, special=False, normalized=False),
                    AddedToken("<r>", rstrip=True, special=False, normalized=False),
                    AddedToken("hello world", special=False, normalized=True)])


def _template(single, tok):
    names = [p for p in single.split() if not p.startswith("$")]
    return processors.TemplateProcessing(single=single, special_tokens=[(n, tok.token_to_id(n)) for n in names])


def _save(tok, out_dir, config):
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _edit(src_tok, fn):
    """A new Tokenizer from src_tok's JSON after fn(dict) edits it (the library validates the result)."""
    d = json.loads(src_tok.to_str())
    fn(d)
    return Tokenizer.from_str(json.dumps(d))


def train_gpt2(lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(lines, _trainer(SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def train_llama3(lines):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, _trainer(SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), _template("<s> $A", tok)])
    return tok


BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_llama2(lines):
    # Trained on Metaspace words (SentencePiece does not merge across spaces either), then given Llama-2's
    # layout. The <0xXX> byte tokens are ordinary vocabulary entries (ids 3..258), as in Llama-2.
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(lines, _trainer(["<unk>", "<s>", "</s>"] + BYTE_TOKENS, limit_alphabet=120))

    def layout(d):
        d["added_tokens"] = [t for t in d["added_tokens"] if t["content"] not in BYTE_TOKENS]
        d["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        d["pre_tokenizer"] = None
        d["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = _edit(tok, layout)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS[2:]])
    tok.post_processor = _template("<s> $A", tok)
    return tok


def build_zoo(root):
    """Trains the zoo into root/<kind>/ (tokenizer.json + tokenizer_config.json); returns {kind: dir}."""
    root = Path(root)
    # The crafted lines are in the training text too (100 times each): merges across their odd boundaries
    # (a space before U+180E, digits next to letters, emoji sequences) then exist, so a pre-tokenizer split
    # that differs from the library's shows up in the ids.
    lines = fortune_lines() + CRAFTED * 100 + crafted_multiline() * 100
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False, "add_eos_token": False}
    dirs = {}

    gpt2 = train_gpt2(lines)
    _add_extra_tokens(gpt2)
    dirs["gpt2"] = _save(gpt2, root / "gpt2", cfg)

    def prefix(d):
        d["pre_tokenizer"]["add_prefix_space"] = True
    gp = _edit(gpt2, prefix)
    gp.post_processor = _template("<s> $A </s>", gp)
    dirs["gpt2_prefix"] = _save(gp, root / "gpt2_prefix", dict(cfg, add_eos_token=True,
                                                                 bos_token={"content": "<s>", "special": True}))

    def unreachable_word(d):  # a vocabulary word no merge makes: only ignore_merges yields it whole
        d["model"]["vocab"][UNTRAINED_WORD] = len(d["model"]["vocab"])
    llama3 = _edit(train_llama3(lines), unreachable_word)
    _add_extra_tokens(llama3)
    dirs["llama3"] = _save(llama3, root / "llama3", dict(cfg, add_bos_token=True))

    def qwen(d):
        d["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": QWEN2_PATTERN}
        d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": False}
        d["model"]["ignore_merges"] = False
        d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]  # the legacy string form
    dirs["qwen2"] = _save(_edit(llama3, qwen), root / "qwen2", dict(cfg, bos_token=None, eos_token="<|im_end|>"))

    llama2 = train_llama2(lines)
    _add_extra_tokens(llama2)
    dirs["llama2"] = _save(llama2, root / "llama2", dict(cfg, add_bos_token=True))

    def metaspace(d):
        d["normalizer"] = None
        d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    dirs["llama2_metaspace"] = _save(_edit(llama2, metaspace), root / "llama2_metaspace", dict(cfg, add_bos_token=True))

    def unk(fuse):
        def f(d):
            d["model"]["byte_fallback"] = False
            d["model"]["fuse_unk"] = fuse
        return f
    dirs["llama2_unk"] = _save(_edit(llama2, unk(True)), root / "llama2_unk", cfg)
    dirs["llama2_unk_nofuse"] = _save(_edit(llama2, unk(False)), root / "llama2_unk_nofuse", cfg)
    return dirs


# Test lines that are not in the training text: UNTRAINED_WORD is in llama3/qwen2's vocabulary but no merge makes it.
UNTRAINED_WORD = "\u0120zqxjv"  # " zqxjv" in the byte-level alphabet
UNTRAINED = ["a zqxjv b", "zqxjv", " zqxjv!", "zqxjv zqxjv"]

# Hand-made lines for the corners of pre-tokenization and added-token matching (no '\n': one text per line).
CRAFTED = [
    "", " ", "  ", "\t", "\t\tindented", "a  b   c", "trailing   ", "   leading", "tab\there", "nbsp\u00a0here",
    "\u00a0\u00a0x", "mixed \t \u00a0 \u3000 spaces", "ideographic\u3000space", "mongolian\u180eseparator",
    "zero\u200bwidth", "bom\ufeffin", "line\u2028sep", "para\u2029sep", "vt\x0bff\x0ccr\r", "nel\u0085x", "cr\rin",
    "12345678901234567890", "3.14159 2,718 1e10", "phone 555-1234", "١٢٣٤ Arabic-Indic digits",
    "४२ Devanagari digits", "Ⅻ roman", "½ ² ³ superscripts", "digits1234567and89",
    "I'm", "you're", "they've", "he'll", "she'd", "it's", "don't", "I'M", "YOU'RE", "THEY'VE", "O'Neil's",
    "rock 'n' roll", "'s 't 're", "ſ'ſ long s", "'ſ 'S 'K 'Ve", "can't won't shan't y'all'd've",
    "日本語のテキストです。", "中文文本，包括标点。", "한국어 텍스트", "مرحبا بالعالم", "नमस्ते दुनिया", "Привет, мир!",
    "Γειά σου Κόσμε", "שלום עולם", "ภาษาไทย", "Ελληνικά and English mixed 混合",
    "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️", "flags 🇩🇪🇯🇵", "keycap 1️⃣ #️⃣", "👩🏽‍💻👨‍🚀",
    "e\u0301 combining acute", "cafe\u0301 vs café", "A\u030a vs Å", "\u1e9b\u0323 dot below", "\u0958 exclusion",
    "Hangul jamo \u1100\u1161\u11a8", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "𝕳𝖊𝖑𝖑𝖔 math letters", "a\u0300\u0301\u0302 stacked",
    "<s>hello</s>", "<s> spaced </s>", "before<|im_start|>user hi<|im_end|>after", "<s><s></s>", "x<s>y",
    "<|im_start|>", "<|im_start", "<s", "</s", "<<s>>", "a <mask> b", "a     <mask>   b", "<mask>", "\t<mask>",
    "[sw] alone", "x[sw]y", "word [sw]", "[sw]", "é[sw]", "_[sw]", "[sw]x", "a [sw]b", "[sw]é", "[sw]_", "-[sw]-", "hello world here", "hellohello world",
    "Hello world", "hello  world", "<r>   after", "<r>", "x <r>\t\ty", "<0x41> literal byte token text",
    "▁ already metaspace ▁▁", "▁", "control \x01\x02\x7f chars", "back\bspace over\bstrike",
    "\U0001F600" * 5, "a" * 300, "abc " * 200, " " * 50, "\t" * 20, "x" + " " * 17 + "y", "!!!???...", "—–-",
    "a\u00a0\u00a0\u00a0b", "  \u00a0  x", "end with nbsp\u00a0", "1 2  3   4",
    # U+180E is \s in PCRE2 but not in Oniguruma: next to punctuation the two engines would split differently
    "x\u180e!", "!\u180e?", "a \u180e\u180e- b", "\u2028!\u0085?",
]


def crafted_multiline():
    """Texts with newlines (JSONL mode): line breaks of every kind next to spaces, specials and digits."""
    return [
        "first line\nsecond line", "\n", "\n\n\n", "a\n\nb", "  \n  ", "x\r\ny", "\r\n\r\n", "tail\n",
        "<|im_start|>user\nWhat's 12345?<|im_end|>\n<|im_start|>assistant\n", "word\n   indented",
        "\n<s>\n", "[sw]\nnext", "<mask>\n", "hello world\n", "digits\n123\n4567\n",
    ]
