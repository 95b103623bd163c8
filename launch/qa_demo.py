# Owns the Python side of launch/qa_demo.sh: the demo tokenizer and Q&A data, and generation with transformers.
"""Domain Q&A fine-tuning demo, offline, from the Debian fortunes corpus.

  prepare OUT   OUT/tokenizer: a byte-level BPE tokenizer (the `tokenizers` library, trained on the fortunes) with
                ChatML special tokens and a ChatML chat template; OUT/qa_train.jsonl, OUT/qa_eval.jsonl:
                {"question", "answer"} pairs (question: a fortune's first line, answer: the rest of it);
                OUT/general.txt: the other fortunes, one per line (the general data mixed in against forgetting).
  generate HF   loads the exported model and tokenizer with transformers and answers held-out questions.
"""
import argparse
import json
import random
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
VOCAB = 2048
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Plain ChatML (moe-prep --chat-template chatml-plain): each turn "<|im_start|>ROLE\nCONTENT<|im_end|>\n", no
# default system turn; the generation prompt opens the assistant turn.
CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
          "{%- endif %}")


def fortunes():
    out = []
    for f in sorted(FORTUNES.iterdir()):
        if f.suffix in (".dat", ".u8") or not f.is_file():
            continue
        for block in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
            if len(lines) >= 2 and all(ln.isascii() for ln in lines):
                out.append(lines)
    return out


def prepare(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    out.mkdir(parents=True, exist_ok=True)
    items = fortunes()
    random.Random(0).shuffle(items)
    qa = [{"question": f[0], "answer": " ".join(f[1:])} for f in items if len(" ".join(f[1:])) < 400][:6000]
    general = [" ".join(f) for f in items[6000:]]
    n_eval = len(qa) // 20
    (out / "qa_eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qa[:n_eval]))
    (out / "qa_train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qa[n_eval:]))
    (out / "general.txt").write_text("\n".join(general) + "\n")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(f) for f in items], trainer)
    td = out / "tokenizer"
    td.mkdir(exist_ok=True)
    tok.save(str(td / "tokenizer.json"))
    (td / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHATML}, indent=1))
    print(f"qa demo: tokenizer {td} ({tok.get_vocab_size()} tokens), {len(qa) - n_eval} train / {n_eval} held-out "
          f"Q&A pairs, {len(general)} general texts")


def generate(hf, data):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    for line in (Path(data) / "qa_eval.jsonl").read_text().splitlines()[:3]:
        q = json.loads(line)
        ids = tok.apply_chat_template([{"role": "user", "content": q["question"]}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=40, do_sample=False)
        reply = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        print(f"Q: {q['question']}\nA (reference): {q['answer']}\nA (model): {reply}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare").add_argument("out")
    g = sub.add_parser("generate")
    g.add_argument("hf")
    g.add_argument("data")
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(Path(a.out))
    else:
        generate(a.hf, a.data)


if __name__ == "__main__":
    main()
