# Owns the reference chat templates (Jinja text as shipped on PyPI) and the conversation corpus of the chat-template and moe-prep build oracles (DESIGN §6 C6.chat, C6.prep).
"""Reference chat templates: the Jinja text transformers renders in the oracles. Nothing here is moe-prep code;
these strings are the models' own template data, copied byte for byte from the PyPI packages named below.

MIXTRAL   Mixtral-8x7B-Instruct-v0.1's chat template (the current one: ' [INST] ' with spaces, an optional first
          system message folded into the first user turn, raise on anything else), as shipped in
          axolotl 0.19.0: axolotl/utils/chat_templates/templates/mistral_v1.jinja. Axolotl's copy also accepts
          content given as a list of text parts; for string contents (all we render) it is the hub template.
QWEN25    Qwen2.5-Instruct's chat template, as shipped in trl 1.16.0: trl/chat_templates/qwen2_5.jinja ("Original
          Qwen2.5 chat template"; byte-identical to axolotl 0.19.0's qwen_25.jinja).
QWEN25_TRAINING  trl 1.16.0: trl/chat_templates/qwen2_5_training.jinja, the same template with
          {% generation %} ... {% endgeneration %} around each assistant reply (TRL's assistant_only_loss
          convention): transformers' return_assistant_tokens_mask gives the loss mask moe-prep must reproduce.
CHATML    the generic ChatML template without a default system message, as shipped in axolotl 0.19.0:
          axolotl/utils/chat_templates/templates/chatml.jinja (moe-prep's `chatml-plain`).
"""
import json
import random

MIXTRAL = r'''{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0]['content'] is string %}
        {%- set system_message = messages[0]['content'] %}
    {%- else %}
        {%- set system_message = messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}
    {%- endif %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['content'] is string %}
        {%- set content = message['content'] %}
    {%- else %}
        {%- set content = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + content + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + content + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + content + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
'''

QWEN25 = r'''{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
'''

QWEN25_TRAINING = r'''{#- Training variant of the Qwen2.5 chat template (see qwen2_5.jinja for the original).
    Modifications vs the original:
    - Added {% generation %} / {% endgeneration %} around assistant message output to support
      assistant-only loss masking in SFT training.
-#}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>assistant' }}
        {%- generation %}
        {%- if not message.tool_calls %}
            {{- '\n' + message.content + '<|im_end|>\n' }}
        {%- else %}
            {%- if message.content %}
                {{- '\n' + message.content }}
            {%- endif %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '\n<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {{- tool_call.arguments | tojson }}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
        {%- endgeneration %}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
'''

CHATML = r'''{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}
'''

# Texts the conversations are made of: fortune lines, the tokenizer oracle's crafted corners (unicode, spaces,
# control characters), multi-line texts, empty content, and content that looks like template syntax or markers.
TEMPLATE_LIKE = [
    "", " ", "  leading spaces", "trailing spaces  ", "a\n\nb", "\n", "line one\nline two\n",
    "[INST] fake turn [/INST]", " [INST] ", "[/INST]", "</s>", "<s>", "x</s>y", "<|im_start|>user\nfake<|im_end|>\n",
    "<|im_end|>", "<|im_start|>assistant", "{{ bos_token }}", "{% if true %}jinja{% endif %}", "{{ messages }}",
    "'quotes' \"double\" \\backslash", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
]


def texts(zoo, n_fortunes, seed):
    lines = zoo.sample([x for x in zoo.fortune_lines() if x.strip()], n_fortunes, seed)
    return lines + list(zoo.CRAFTED) + zoo.crafted_multiline() + TEMPLATE_LIKE


def conversations(pool, n, seed, system_pool=None, end_with_user=False):
    """n conversations of 1..4 exchanges (user, assistant), a third with a system message first; with
    end_with_user the last assistant reply is left out (what a generation prompt follows)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        msgs = []
        if i % 3 == 0:
            msgs.append({"role": "system", "content": rnd.choice(system_pool or pool)})
        for _ in range(rnd.randint(1, 4)):
            msgs.append({"role": "user", "content": rnd.choice(pool)})
            msgs.append({"role": "assistant", "content": rnd.choice(pool)})
        if end_with_user:
            msgs.pop()
        out.append(msgs)
    return out


# Conversations the Mixtral template raises on (roles not alternating after the optional first system message,
# a system message later on, unknown roles, an assistant first).
MIXTRAL_RAISES = [
    [{"role": "assistant", "content": "first"}],
    [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
    [{"role": "user", "content": "u"}, {"role": "user", "content": "u2"}],
    [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
    [{"role": "user", "content": "u"}, {"role": "system", "content": "s"}],
    [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "system", "content": "s"}],
    [{"role": "system", "content": "s"}, {"role": "system", "content": "s2"}, {"role": "user", "content": "u"}],
    [{"role": "tool", "content": "t"}],
    [{"role": "user", "content": "u"}, {"role": "tool", "content": "t"}],
]


def write_tokenizer_dir(dest, tokenizer_json, config, template=None, template_file=False):
    """dest/tokenizer.json (copied) + tokenizer_config.json (config + chat_template unless template_file, which
    writes dest/chat_template.jinja instead)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    cfg = dict(config)
    if template is not None and not template_file:
        cfg["chat_template"] = template
    if template is not None and template_file:
        (dest / "chat_template.jinja").write_text(template)
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    return dest


def mistral_v1_model_path():
    """Mistral's v1 SentencePiece model (the Mistral-7B / Mixtral-8x7B v0.1 vocabulary), shipped in mistral-common."""
    import os
    import mistral_common
    return os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


def mixtral_tokenizer_json(work):
    """A tokenizer.json of Mixtral's vocabulary: transformers' own SentencePiece conversion (LlamaTokenizer in
    transformers 5) of mistral-common's tokenizer.model.v1."""
    import shutil
    from transformers import LlamaTokenizer
    src = work / "spm"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(mistral_v1_model_path(), src / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(src)).save_pretrained(str(work / "hf"))
    return work / "hf" / "tokenizer.json"


def make_template_dirs(root, zoo_dirs):
    """{name: tokenizer dir}: a tokenizer with the reference template in tokenizer_config.json (or in
    chat_template.jinja for qwen25_file)."""
    mixtral_json = mixtral_tokenizer_json(root / "mixtral_src")
    mx_cfg = {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}
    qw_cfg = {"bos_token": None, "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    return {
        "mixtral": write_tokenizer_dir(root / "mixtral", mixtral_json, mx_cfg, MIXTRAL),
        # the Llama-2 layout (Prepend + Replace normalizer): pieces encode differently, spans need prefixes
        "mixtral_legacy": write_tokenizer_dir(root / "mixtral_legacy", zoo_dirs["llama2"] / "tokenizer.json",
                                              mx_cfg, MIXTRAL),
        "qwen25": write_tokenizer_dir(root / "qwen25", zoo_dirs["qwen2"] / "tokenizer.json", qw_cfg, QWEN25),
        "qwen25_file": write_tokenizer_dir(root / "qwen25_file", zoo_dirs["qwen2"] / "tokenizer.json", qw_cfg,
                                           QWEN25, template_file=True),
        "chatml": write_tokenizer_dir(root / "chatml", zoo_dirs["gpt2"] / "tokenizer.json",
                                      {"bos_token": "<s>", "eos_token": "</s>"}, CHATML),
    }


def hf_tokenizer(tdir, template=None):
    """transformers' tokenizer for a template dir (PreTrainedTokenizerFast over the same tokenizer.json)."""
    from transformers import PreTrainedTokenizerFast
    cfg = json.loads((tdir / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tdir / "tokenizer.json"), bos_token=cfg.get("bos_token"),
                                  eos_token=cfg.get("eos_token"))
    if template is None:
        template = cfg.get("chat_template")
        if template is None:
            template = (tdir / "chat_template.jinja").read_text()
    tok.chat_template = template
    return tok
