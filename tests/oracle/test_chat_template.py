# Owns the chat-template oracle (DESIGN §6 C6.chat): `moe-prep chat` text and loss spans against transformers' apply_chat_template on the reference Mixtral / Qwen2.5 / ChatML templates, and Mixtral token ids against mistral-common.
"""contract: C6.chat

Expected text comes only from transformers (5.x) `PreTrainedTokenizerFast.apply_chat_template(messages,
tokenize=False, add_generation_prompt=...)` with the reference templates of chat_refs.py (Jinja text from PyPI
packages, cited there). Expected loss spans: Mixtral's from rendering with and without each reply (the template
has no generation tags); ChatML's from the {% generation %} blocks of TRL's Qwen2.5 training template. Expected
Mixtral ids: mistral-common's own v1 instruct tokenizer (`encode_chat_completion`) on Mistral's tokenizer.model.v1.
"""
import json
import os
import subprocess

import pytest
from jinja2.exceptions import TemplateError

import chat_refs as refs
import hf_tiny
import tokenizer_zoo as zoo

N_CONV = 150


def prep_exe():
    exe = hf_tiny.build_dir() / "moe-prep"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build it (cmake --build build --target moe-prep) or set MOE_BUILD_DIR")
    return str(exe)


def run_prep(args, data=b""):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([prep_exe()] + args, input=data, capture_output=True, timeout=300, env=env)


def chat_ours(tdir, convs, name=None, gen=False, spans=False):
    data = "".join(json.dumps({"messages": c}) + "\n" for c in convs).encode()
    args = ["chat", "--tokenizer", str(tdir)] + (["--chat-template", name] if name else []) + (
        ["--add-generation-prompt"] if gen else []) + (["--spans"] if spans else [])
    r = run_prep(args, data)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) == len(convs) + 1
    return [json.loads(x) for x in out[:-1]]


def char_span(text, b, e):
    """Byte offsets into text's UTF-8 → character offsets."""
    raw = text.encode()
    return len(raw[:b].decode()), len(raw[:e].decode())


@pytest.fixture(scope="session")
def zoo_dirs(tmp_path_factory):
    return zoo.build_zoo(tmp_path_factory.mktemp("chat_zoo"))


@pytest.fixture(scope="session")
def tdirs(tmp_path_factory, zoo_dirs):
    return refs.make_template_dirs(tmp_path_factory.mktemp("chat_dirs"), zoo_dirs)


@pytest.fixture(scope="session")
def pool():
    return refs.texts(zoo, 300, seed=5)


def all_convs(pool):
    return (refs.conversations(pool, N_CONV, seed=1) + refs.conversations(pool, N_CONV // 2, seed=2, end_with_user=True)
            + [[{"role": "user", "content": "only one"}], [{"role": "system", "content": "only a system message"}]])


CASES = [("mixtral", "mixtral"), ("mixtral_legacy", "mixtral"), ("qwen25", "chatml"), ("qwen25_file", "chatml"),
         ("chatml", "chatml-plain")]


@pytest.mark.parametrize("gen", [False, True], ids=["nogen", "genprompt"])
@pytest.mark.parametrize("select", ["auto", "named"])
@pytest.mark.parametrize("kind,name", CASES)
def test_chat_text_equals_transformers_C6_chat(tdirs, pool, kind, name, select, gen):
    convs = all_convs(pool)
    if name.startswith("chatml"):  # orders the Mixtral template refuses are plain turns in ChatML
        convs += [c for c in refs.MIXTRAL_RAISES if all(m["role"] in ("system", "user", "assistant") for m in c)]
    hf = refs.hf_tokenizer(tdirs[kind])
    ref = [hf.apply_chat_template(c, tokenize=False, add_generation_prompt=gen) for c in convs]
    ours = chat_ours(tdirs[kind], convs, name if select == "named" else None, gen)
    bad = [(c, r, o) for c, r, o in zip(convs, ref, ours) if r != o]
    assert not bad, f"{len(bad)} of {len(convs)} differ; first: " + "; ".join(
        f"{c!r}: transformers {r!r} vs moe-prep {o!r}" for c, r, o in bad[:2])


@pytest.mark.parametrize("kind", ["mixtral", "mixtral_legacy"])
def test_mixtral_refuses_what_the_template_raises_on_C6_chat(tdirs, kind):
    hf = refs.hf_tokenizer(tdirs[kind])
    for conv in refs.MIXTRAL_RAISES:
        with pytest.raises(TemplateError):
            hf.apply_chat_template(conv, tokenize=False)
        r = run_prep(["chat", "--tokenizer", str(tdirs[kind])], (json.dumps({"messages": conv}) + "\n").encode())
        assert r.returncode == 2, (conv, r.stdout, r.stderr)
        assert b"stdin line 1: messages[" in r.stderr, r.stderr


def test_mixtral_loss_spans_are_each_reply_C6_chat(tdirs, pool):
    """A reply's span is what rendering it adds to the conversation before it: ' ' + content + '</s>'."""
    convs = refs.conversations(pool, N_CONV, seed=3)
    hf = refs.hf_tokenizer(tdirs["mixtral"])
    ours = chat_ours(tdirs["mixtral"], convs, spans=True)
    for conv, o in zip(convs, ours):
        text = hf.apply_chat_template(conv, tokenize=False)
        assert o["text"] == text
        want = []
        for k, m in enumerate(conv):
            if m["role"] == "assistant":
                before = hf.apply_chat_template(conv[:k], tokenize=False)
                upto = hf.apply_chat_template(conv[:k + 1], tokenize=False)
                assert text.startswith(upto) and upto.startswith(before)
                want.append((len(before), len(upto)))
        assert [char_span(text, b, e) for b, e in o["loss_spans"]] == want, conv


def generation_spans(conv):
    """Character spans of the {% generation %} blocks of TRL's Qwen2.5 training template: the template is rendered
    by transformers' Jinja setup with the two tags replaced by sentinel characters."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    tpl = refs.QWEN25_TRAINING.replace("{%- generation %}", "{{- '\\x02' }}").replace(
        "{%- endgeneration %}", "{{- '\\x03' }}")
    assert tpl.count("\\x02") == 1 and tpl.count("\\x03") == 1
    # transformers' Jinja settings (trim_blocks, lstrip_blocks); the text is checked against apply_chat_template
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    marked = env.from_string(tpl).render(messages=conv, add_generation_prompt=False)
    spans, text = [], ""
    for ch in marked:
        if ch == "\x02":
            spans.append([len(text), None])
        elif ch == "\x03":
            spans[-1][1] = len(text)
        else:
            text += ch
    return text, [tuple(s) for s in spans]


def test_chatml_loss_spans_are_trl_generation_blocks_C6_chat(tdirs, pool):
    convs = [c for c in refs.conversations(pool, N_CONV, seed=4)
             if not any("\x02" in m["content"] or "\x03" in m["content"] for m in c)]
    hf = refs.hf_tokenizer(tdirs["qwen25"])
    ours = chat_ours(tdirs["qwen25"], convs, spans=True)
    for conv, o in zip(convs, ours):
        text, want = generation_spans(conv)
        assert text == hf.apply_chat_template(conv, tokenize=False) == o["text"]
        assert [char_span(text, b, e) for b, e in o["loss_spans"]] == want, conv


def test_auto_refuses_missing_or_unknown_templates_C6_chat(tmp_path, zoo_dirs):
    tj = zoo_dirs["qwen2"] / "tokenizer.json"
    cfg = {"eos_token": "<|im_end|>"}
    qwen3_like = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}{%- if enable_thinking "
                  "is defined %}<think>\\n\\n</think>{%- endif %}{{- message.content + '<|im_end|>\\n' }}{%- endfor %}")
    llama3_like = ("{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m.role + '<|end_header_id|>"
                   "\\n\\n' + m.content + '<|eot_id|>' }}{%- endfor %}")
    mistral_v3_like = "{%- for m in messages %}{%- if m.role == 'user' %}{{- '[INST]' + m.content + '[/INST]' }}{%- endif %}{%- endfor %}"
    cases = {"none": None, "qwen3": qwen3_like, "llama3": llama3_like, "mistral_v3": mistral_v3_like}
    for label, tpl in cases.items():
        d = refs.write_tokenizer_dir(tmp_path / label, tj, cfg, tpl)
        r = run_prep(["chat", "--tokenizer", str(d)], b'{"messages": [{"role": "user", "content": "x"}]}\n')
        err = r.stderr.decode()
        assert r.returncode == 2, (label, err)
        assert "tokenizer_config.json" in err and "--chat-template" in err, (label, err)
        # naming the template explicitly works
        r = run_prep(["chat", "--tokenizer", str(d), "--chat-template", "chatml"],
                     b'{"messages": [{"role": "user", "content": "x"}]}\n')
        assert r.returncode == 0, r.stderr
    # the older list form of chat_template: the "default" entry is used
    d = refs.write_tokenizer_dir(tmp_path / "listform", tj, dict(cfg, chat_template=[
        {"name": "tool_use", "template": "{{ 'unused' }}"}, {"name": "default", "template": refs.QWEN25}]))
    assert chat_ours(d, [[{"role": "user", "content": "x"}]]) == [
        "<|im_start|>system\n" + "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        + "<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"]


def spm_agrees(sp, tok, text):
    return sp.encode(text, out_type=int) == tok.encode(text, add_special_tokens=False).ids


def test_mixtral_ids_equal_mistral_common_C6_chat(tdirs, pool, tmp_path):
    """moe-prep build --format chat ids == mistral-common's v1 instruct ids (its reference for Mixtral), on
    conversations whose pieces SentencePiece and the converted tokenizer.json split alike (they differ on runs of
    spaces and leading spaces: a property of the HF conversion, not of the template)."""
    import sentencepiece
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from tokenizers import Tokenizer

    sp = sentencepiece.SentencePieceProcessor(model_file=refs.mistral_v1_model_path())
    tok = Tokenizer.from_file(str(tdirs["mixtral"] / "tokenizer.json"))
    texts = [t for t in pool if t.strip() and t == t.strip() and "  " not in t and "\n" not in t
             and not any(s in t for s in ("<s>", "</s>", "[INST]", "[/INST]"))]
    convs = []
    for c in refs.conversations(texts, 400, seed=9):
        sys_p = c[0]["content"] + "\n\n" if c[0]["role"] == "system" else ""
        users = [m for m in c if m["role"] == "user"]
        pieces = [f"[INST] {sys_p if m is users[0] else ''}{m['content']} [/INST]" for m in users]
        pieces += [m["content"] for m in c if m["role"] == "assistant"]
        if all(spm_agrees(sp, tok, p) for p in pieces):
            convs.append(c)
    assert len(convs) >= 100, len(convs)
    mt = MistralTokenizer.from_file(refs.mistral_v1_model_path(), mode=ValidationMode.finetuning)
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    ref = [mt.encode_chat_completion(ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"])
                                                                     for m in c])).tokens for c in convs]
    inp = tmp_path / "chat.jsonl"
    inp.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    out = tmp_path / "out"
    r = run_prep(["build", "--tokenizer", str(tdirs["mixtral"]), "--out", str(out), "--format", "chat", str(inp)])
    assert r.returncode == 0, r.stderr.decode()
    import numpy as np
    ids = np.fromfile(out / "tokens.bin", dtype="<u4").tolist()
    starts = np.fromfile(out / "docs.bin", dtype="<u8").tolist()
    ours = [ids[starts[i]:starts[i + 1]] for i in range(len(convs))]
    bad = [(c, r_, o) for c, r_, o in zip(convs, ref, ours) if r_ != o]
    assert not bad, f"{len(bad)} of {len(convs)} differ; first: {bad[0]}"
