#!/usr/bin/env bash
# Owns the moe-train CLI tests (DESIGN §6: exit codes, messages, --dry-run, metrics.jsonl): run_cli_tests.sh CASE MOE_TRAIN.
set -u

CASE=${1:?usage: run_cli_tests.sh CASE /path/to/moe-train}
BIN=${2:?usage: run_cli_tests.sh CASE /path/to/moe-train}
case "$BIN" in /*) ;; */*) BIN="$PWD/$BIN" ;; esac  # we cd into a temp dir below
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/moe-cli.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
ulimit -c 0 2>/dev/null || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

FAILED=0
fail() { echo "FAIL [$CASE]: $*" >&2; FAILED=1; }

# run ARGS...: runs moe-train, stdout → out.txt, stderr → err.txt, both → all.txt; sets RC.
run() {
  echo "+ moe-train $*" >&2
  timeout -k 5 90 "$BIN" "$@" >out.txt 2>err.txt  # a hang (e.g. reading a FIFO) fails as exit 124
  RC=$?
  cat out.txt err.txt >all.txt
  sed 's/^/  | /' all.txt | head -40 >&2
}
expect_rc() {
  if [ "$RC" -ne "$1" ]; then
    if [ "$RC" -ge 128 ]; then fail "killed by signal $((RC - 128)) (exit $RC); expected exit $1"
    else fail "exit code $RC, expected $1"; fi
  fi
}
# expect_has PHRASE...: every phrase appears (fixed string) in stdout+stderr.
expect_has() {
  local p
  for p in "$@"; do grep -qF -- "$p" all.txt || fail "output lacks '$p'"; done
}
expect_bad_input() {  # expect_bad_input PHRASE... : exit exactly 2 and the phrases in the message
  expect_rc 2
  expect_has "$@"
}

# ---------------------------------------------------------------- inputs

# A tiny Mixtral config over uint32 token files (vocab 32).
write_tiny_yaml() {  # write_tiny_yaml FILE DATA [EXTRA YAML...]
  local f=$1 data=$2
  shift 2
  cat >"$f" <<EOF
run:
  name: cli
  dir: $T/run
model:
  arch: mixtral
  vocab_size: 32
  hidden_size: 8
  intermediate_size: 16
  num_layers: 1
  num_heads: 2
  num_kv_heads: 1
  num_experts: 2
  top_k: 1
train:
  device: cpu
  seq_len: 8
  micro_batch: 2
  steps: 2
  lr: 1.0e-3
data:
  format: tokens
  dtype: uint32
  path: $data
EOF
  local extra
  for extra in "$@"; do printf '%s\n' "$extra" >>"$f"; done
}

# write_u32 FILE ID...: little-endian uint32 token file.
write_u32() {
  local f=$1 v
  shift
  : >"$f"
  for v in "$@"; do
    printf %b "\\x$(printf %02x $((v & 255)))\\x$(printf %02x $(((v >> 8) & 255)))\\x$(printf %02x $(((v >> 16) & 255)))\\x$(printf %02x $(((v >> 24) & 255)))" >>"$f"
  done
}
write_tokens() {  # write_tokens FILE N: ids i % 32
  local f=$1 n=$2 i ids=()
  for ((i = 0; i < n; i++)); do ids+=($((i * 7 % 32))); done
  write_u32 "$f" "${ids[@]}"
}

# Safetensors writer (pure bash): F32 tensors, each filled with one repeated value.
ST_NAMES=() ST_SHAPES=() ST_FILLS=()
st_add() { ST_NAMES+=("$1"); ST_SHAPES+=("$2"); ST_FILLS+=("$3"); }  # NAME "d0,d1" FILL(4 escaped bytes)
st_write() {  # st_write FILE
  local f=$1 hdr="{" off=0 i n d sep="" len pad k
  for i in "${!ST_NAMES[@]}"; do
    n=1
    for d in ${ST_SHAPES[$i]//,/ }; do n=$((n * d)); done
    hdr+="$sep\"${ST_NAMES[$i]}\":{\"dtype\":\"F32\",\"shape\":[${ST_SHAPES[$i]}],\"data_offsets\":[$off,$((off + 4 * n))]}"
    off=$((off + 4 * n))
    sep=","
  done
  hdr+="}"
  len=${#hdr}
  pad=$(((8 - len % 8) % 8))
  for ((k = 0; k < pad; k++)); do hdr+=" "; done
  len=${#hdr}
  : >"$f"
  for ((k = 0; k < 8; k++)); do printf %b "\\x$(printf %02x $(((len >> (8 * k)) & 255)))" >>"$f"; done
  printf '%s' "$hdr" >>"$f"
  for i in "${!ST_NAMES[@]}"; do
    n=1
    for d in ${ST_SHAPES[$i]//,/ }; do n=$((n * d)); done
    local chunk="" c
    for ((c = 0; c < n; c++)); do chunk+=${ST_FILLS[$i]}; done
    printf %b "$chunk" >>"$f"
  done
}

# make_model_dir DIR [SKIP_NAME] [BAD_SHAPE_NAME]: HF-style tiny Mixtral (vocab 32, hidden 8, inter 16,
# 1 layer, 2 heads / 1 kv head (head_dim 4), 2 experts, top-1); names as src/model/param_table.cpp.
make_model_dir() {
  local dir=$1 skip=${2:-} badshape=${3:-}
  mkdir -p "$dir"
  cat >"$dir/config.json" <<'EOF'
{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32, "hidden_size": 8,
 "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
 "num_local_experts": 2, "num_experts_per_tok": 1, "hidden_act": "silu", "rms_norm_eps": 1e-05,
 "rope_theta": 1000000.0, "tie_word_embeddings": false, "max_position_embeddings": 64}
EOF
  local small='\x0a\xd7\x23\x3c' one='\x00\x00\x80\x3f' neg='\x0a\xd7\x23\xbc'  # 0.01, 1.0, -0.01
  local p=model.layers.0 e
  ST_NAMES=() ST_SHAPES=() ST_FILLS=()
  st_add model.embed_tokens.weight 32,8 "$small"
  st_add $p.input_layernorm.weight 8 "$one"
  st_add $p.self_attn.q_proj.weight 8,8 "$small"
  st_add $p.self_attn.k_proj.weight 4,8 "$neg"
  st_add $p.self_attn.v_proj.weight 4,8 "$small"
  st_add $p.self_attn.o_proj.weight 8,8 "$small"
  st_add $p.post_attention_layernorm.weight 8 "$one"
  st_add $p.block_sparse_moe.gate.weight 2,8 "$small"
  for e in 0 1; do
    st_add $p.block_sparse_moe.experts.$e.w1.weight 16,8 "$small"
    st_add $p.block_sparse_moe.experts.$e.w2.weight 8,16 "$neg"
    st_add $p.block_sparse_moe.experts.$e.w3.weight 16,8 "$small"
  done
  st_add model.norm.weight 8 "$one"
  st_add lm_head.weight 32,8 "$small"
  local i keep_n=() keep_s=() keep_f=()
  for i in "${!ST_NAMES[@]}"; do
    [ "${ST_NAMES[$i]}" = "$skip" ] && continue
    keep_n+=("${ST_NAMES[$i]}")
    if [ "${ST_NAMES[$i]}" = "$badshape" ]; then keep_s+=("${ST_SHAPES[$i]},1"); else keep_s+=("${ST_SHAPES[$i]}"); fi
    keep_f+=("${ST_FILLS[$i]}")
  done
  ST_NAMES=("${keep_n[@]}") ST_SHAPES=("${keep_s[@]}") ST_FILLS=("${keep_f[@]}")
  st_write "$dir/model.safetensors"
}

# st_raw FILE HEADER NBYTES: safetensors file with the given JSON header (unpadded) and NBYTES zero data bytes.
st_raw() {
  local f=$1 hdr=$2 n=$3 len k
  len=${#hdr}
  : >"$f"
  for ((k = 0; k < 8; k++)); do printf %b "\\x$(printf %02x $(((len >> (8 * k)) & 255)))" >>"$f"; done
  printf '%s' "$hdr" >>"$f"
  head -c "$n" /dev/zero >>"$f"
}
repeat() { head -c "$2" /dev/zero | tr '\0' "$1"; }  # repeat CHAR N

# A config that starts from an HF dir: architecture keys come from its config.json.
write_init_yaml() {  # write_init_yaml FILE MODEL_DIR
  cat >"$1" <<EOF
run:
  dir: $T/run
model:
  init_from: $2
train:
  device: cpu
  seq_len: 8
  micro_batch: 2
  steps: 2
  lr: 1.0e-3
data:
  format: tokens
  dtype: uint32
  path: $T/tok.bin
EOF
}

write_text() {  # write_text FILE: ~8 KB of English-ish text
  local f=$1 i
  : >"$f"
  for ((i = 0; i < 60; i++)); do
    printf 'The quick brown fox %d jumps over the lazy dog while the river runs to the sea. ' "$i" >>"$f"
    printf 'A mixture of experts routes every token to a few small networks and adds their outputs.\n' >>"$f"
  done
}

# ---------------------------------------------------------------- cases

case "$CASE" in
  unknown_key)
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    sed -i 's/^  lr: 1.0e-3$/  lrr: 1.0e-3/' c.yaml
    run c.yaml
    expect_bad_input train.lrr
    ;;
  wrong_type)
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    sed -i 's/^  steps: 2$/  steps: ten/' c.yaml
    run c.yaml
    expect_bad_input train.steps ten
    ;;
  bad_enum)
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin" "moe:" "  drop_policy: random"
    run c.yaml
    expect_bad_input moe.drop_policy random probs position
    ;;
  bad_set)
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.lr
    expect_bad_input train.lr
    grep -q '=' all.txt || fail "message for '--set train.lr' does not mention the missing '='"
    run c.yaml --set nope.x=1
    expect_bad_input nope.x
    ;;
  missing_config)
    run "$T/does_not_exist.yaml"
    expect_bad_input does_not_exist.yaml
    ;;
  missing_data)
    write_tiny_yaml c.yaml "$T/no_such_tokens.bin"
    run c.yaml
    expect_bad_input data.path no_such_tokens.bin
    ;;
  token_id_ge_vocab)
    write_tokens tok.bin 40
    write_u32 bad.bin 1 2 3 4 5 6 7 8 9 10
    write_u32 big.bin 40
    cat tok.bin big.bin bad.bin >mix.bin  # id 40 at position 40
    write_tiny_yaml c.yaml "$T/mix.bin"
    run c.yaml
    expect_bad_input mix.bin 40 vocab_size 32
    ;;
  data_too_short)
    write_tokens tok.bin 8  # seq_len 8 needs 9
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml
    expect_bad_input tok.bin seq_len
    ;;
  data_odd_size)
    write_tokens tok.bin 64
    printf '\x01\x02\x03' >>tok.bin
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml
    expect_bad_input tok.bin "multiple of 4"
    ;;
  eval_errors)
    write_tokens tok.bin 200
    write_tokens held.bin 30  # 3 windows of 8 + 1: fewer than one global batch of 4 windows with grad_accum 2
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set eval.every=5
    expect_bad_input "eval.every" "needs eval.data"
    run c.yaml --set eval.at_start=true
    expect_bad_input "eval.at_start" "needs eval.data"
    run c.yaml --set eval.data="$T/no_such_heldout.bin"
    expect_bad_input "eval.data" no_such_heldout.bin
    run c.yaml --set eval.data="$T/held.bin" --set train.grad_accum=2
    expect_bad_input "eval.data" held.bin "fewer than one global batch"
    run c.yaml --set eval.data="$T/held.bin" --set eval.every=-1
    expect_bad_input "eval.every"
    # Two windows (one global batch): trains and logs the eval fields at the end.
    run c.yaml --set eval.data="$T/held.bin"
    expect_rc 0
    expect_has "eval after step 2 | loss"
    grep -q '"step":2.*"eval_loss"\|"eval_loss".*"step":2' "$T/run/metrics.jsonl" || fail "no eval_loss on the last step's line"
    ;;
  init_from_ok)
    make_model_dir model
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model"
    run c.yaml
    expect_rc 0
    [ "$(wc -l <run/metrics.jsonl 2>/dev/null || echo 0)" -eq 2 ] || fail "run/metrics.jsonl does not have 2 lines"
    ;;
  truncated_safetensors)
    make_model_dir model
    size=$(stat -c %s model/model.safetensors)
    truncate -s $((size - 100)) model/model.safetensors
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model"
    run c.yaml
    expect_bad_input model.safetensors truncated
    truncate -s 300 model/model.safetensors  # inside the JSON header
    run c.yaml
    expect_bad_input model.safetensors truncated
    ;;
  shape_mismatch)
    make_model_dir model "" model.layers.0.self_attn.k_proj.weight
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model"
    run c.yaml
    expect_bad_input model.layers.0.self_attn.k_proj.weight "[4, 8, 1]" "[4, 8]"
    ;;
  missing_tensor)
    make_model_dir model model.layers.0.block_sparse_moe.experts.1.w2.weight
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model"
    run c.yaml
    expect_bad_input model.layers.0.block_sparse_moe.experts.1.w2.weight missing
    ;;
  bad_config_json)
    make_model_dir model
    sed -i 's/"model_type": "mixtral"/"model_type": "gpt2"/' model/config.json
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model"
    run c.yaml
    expect_bad_input config.json gpt2 model_type
    ;;
  init_from_not_a_dir)
    echo "not a model" >model.txt
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model.txt"
    run c.yaml
    expect_bad_input model.init_from model.txt
    ;;
  dry_run)
    # The shipped GPU configs, planned for 8 ranks on a CPU build with a token file present: the counts are
    # the published sizes (Mixtral-8x7B 46.7B total / 12.9B active, Qwen3-30B-A3B 30.5B), human-readable.
    head -c 20000 /dev/zero >tok.bin  # 5000 uint32 ids 0: one window of seq_len 4096 + 1
    for spec in mixtral:46:47:46.7B qwen3_moe:30:31:30.5B; do
      IFS=: read -r name lo hi human <<<"$spec"
      run "$SRC/configs/$name.yaml" --dry-run --world 8 --set train.device=cpu --set train.precision=fp32 \
        --set "data.path=$T/tok.bin"
      expect_rc 0
      expect_has weights gradients optimizer activations "($human)" "precision: fp32" "checks passed"
      params=$(sed -n 's/^parameters: \([0-9][0-9]*\) .*/\1/p' out.txt | head -1)
      if [ -z "$params" ]; then
        fail "$name: no 'parameters: N' line on stdout"
      elif [ "$params" -lt $((lo * 1000000000)) ] || [ "$params" -gt $((hi * 1000000000)) ]; then
        fail "$name: $params parameters, expected between ${lo}e9 and ${hi}e9"
      fi
    done
    grep -qF "(12.9B)" <(run "$SRC/configs/mixtral.yaml" --dry-run --set train.device=cpu --set train.precision=fp32 \
      --set "data.path=$T/tok.bin"; cat all.txt) || fail "mixtral: active parameters not shown as 12.9B"
    # As written (train.device: cuda, bf16, no data/train.bin): the plan (bf16: fp32 master/grads/moments + the
    # bf16 weight copy), then exit 2 naming each reason (bf16 itself trains on the CPU: not a reason).
    run "$SRC/configs/mixtral.yaml" --dry-run
    expect_rc 2
    expect_has "(46.7B)" "a real run would stop" "per GPU (one rank each)" \
      "data/train.bin" "precision: bf16 (fp32 master weights" "bf16 weight copy"
    grep -qF "train.precision: bf16 is not implemented" all.txt && fail "bf16 still refused"
    ;;
  bf16_cpu)
    # train.precision: bf16 trains on the CPU (DESIGN §8); the dry-run plan sizes bf16 activations, below fp32's.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.precision=bf16
    expect_rc 0
    grep -q '"loss"' run/metrics.jsonl 2>/dev/null || fail "bf16: no metrics.jsonl with a loss"
    run c.yaml --set train.precision=bf16 --set train.device=cuda
    expect_bad_input "train.device: cuda"
    head -c 20000 /dev/zero >tok.bin
    declare -A act
    for prec in fp32 bf16; do
      run "$SRC/configs/mixtral.yaml" --dry-run --world 8 --set train.device=cpu --set train.precision=$prec \
        --set "data.path=$T/tok.bin"
      expect_rc 0
      expect_has "precision: $prec ("
      act[$prec]=$(sed -n 's/^  activations *\([0-9.]*\) GiB.*/\1/p' out.txt | head -1)
      [ -n "${act[$prec]}" ] || fail "$prec: no 'activations N GiB' line"
    done
    if [ -n "${act[fp32]}" ] && [ -n "${act[bf16]}" ] &&
      ! awk -v a="${act[bf16]}" -v b="${act[fp32]}" 'BEGIN { exit !(a < b) }'; then
      fail "bf16 activations ${act[bf16]} GiB not below fp32's ${act[fp32]} GiB"
    fi
    ;;
  dry_run_refuses)
    # What a real run refuses before step 1, a dry run refuses too (exit 2, the same reason).
    write_tokens tok.bin 64
    write_u32 big.bin 1 2 40 3 4 5 6 7 8 9 10 11
    write_tiny_yaml c.yaml "$T/tok.bin"
    for args in "--set data.path=$T/no_such.bin|no_such.bin" "--set data.path=$T|is a directory without meta.json" \
                "--set data.path=$T/big.bin|token id 40" "--set parallel.ep=3|must divide" \
                "--set parallel.backend=nccl|parallel.backend: nccl" \
                "--set train.seq_len=100|shorter than one window"; do
      set -- ${args%%|*}
      want=${args#*|}
      run c.yaml "$@"
      expect_bad_input "$want"
      run c.yaml --dry-run "$@"
      expect_bad_input "$want"
    done
    ;;
  data_sources)
    # data.mix of two token files trains; a moe-prep build directory (tokens.bin, loss_mask.bin, meta.json) trains
    # with and without data.mask_prompt; the combinations that cannot work stop with exit 2 naming the key.
    write_tokens tok.bin 64
    write_tokens tok2.bin 80
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set "data.path=" --set "data.mix=[{path: $T/tok.bin, weight: 3}, {path: $T/tok2.bin, weight: 1}]"
    expect_rc 0
    run c.yaml --set "data.mix=[{path: $T/tok2.bin, weight: 1}]" --set run.overwrite=true
    expect_bad_input "data.path and data.mix are both set"
    run c.yaml --set data.mask_prompt=true --set run.overwrite=true
    expect_bad_input "data.mask_prompt: true needs loss masks" "$T/tok.bin"
    run c.yaml --dry-run --set data.mask_prompt=true
    expect_bad_input "data.mask_prompt: true needs loss masks"
    mkdir -p prep && cp tok.bin prep/tokens.bin
    head -c 64 /dev/zero | tr '\0' '\1' >prep/loss_mask.bin
    echo '{"format_version": 1, "num_tokens": 64}' >prep/meta.json
    run c.yaml --set "data.path=$T/prep" --set data.mask_prompt=true --set run.overwrite=true
    expect_rc 0
    run c.yaml --set "data.path=$T/prep" --set "data.tokenizer=$T/prep" --set run.overwrite=true
    expect_bad_input "tokenizer.json"
    run c.yaml --set data.format=text --set "data.tokenizer=$T/prep" --set run.overwrite=true
    expect_bad_input "tokenizer.json"
    run c.yaml --set data.chat_template=chatml --set run.overwrite=true
    expect_bad_input "data.chat_template applies to data.format: jsonl"
    run c.yaml --set data.format=jsonl --set run.overwrite=true
    expect_bad_input "data.format: jsonl needs data.tokenizer"
    echo '{"format_version": 1, "num_tokens": 63}' >prep/meta.json
    run c.yaml --set "data.path=$T/prep" --set run.overwrite=true
    expect_bad_input "prep/tokens.bin" "meta.json says 63"
    ;;
  unimplemented_keys)
    # Parsed but not implemented yet: refused with exit 2 (real run and dry run), never silently ignored.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    # data.reset_attention on the GPU (the dry run lists every problem, so the phrase shows with or without a GPU).
    run c.yaml --dry-run --set train.device=cuda --set data.reset_attention=true
    expect_bad_input "data.reset_attention: true is not implemented yet on train.device: cuda"
    # log.plots without the plot tool's Python: refused before any work, naming what is missing.
    MOE_PLOT_PYTHON=/nonexistent/python run c.yaml --set log.plots=true
    expect_bad_input "log.plots: true needs the project's Python environment" "/nonexistent/python"
    [ -e run/metrics.jsonl ] && fail "log.plots: the run trained anyway"
    ;;
  lora_config_errors)
    # LoRA/QLoRA recipes a run refuses before step 1 (real run and dry run alike): exit 2 naming the key.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    for args in "peft.method=lora peft.targets=[q_proj,gate]|never LoRA-wrapped" \
                "peft.method=lora peft.targets=[q_proj,block_sparse_moe.gate]|peft.train_router" \
                "peft.method=lora peft.targets=[wq]|'wq' matches no projection" \
                "peft.method=qlora|peft.targets: empty" \
                "peft.method=lora peft.targets=[w1] moe.expert_dropout=0.1|moe.expert_dropout" \
                "peft.method=lora peft.targets=[w1] peft.dropout=1|peft.dropout" \
                "model.adapter_from=$T|model.adapter_from" \
                "peft.double_quant=true|peft.double_quant"; do
      sets=()
      for kv in ${args%%|*}; do sets+=(--set "$kv"); done
      want=${args#*|}
      run c.yaml "${sets[@]}"
      expect_bad_input "$want"
      [ -e run/metrics.jsonl ] && fail "$want: the run trained anyway"
      run c.yaml --dry-run "${sets[@]}"
      expect_bad_input "$want"
    done
    ;;
  lora_ok)
    # LoRA and QLoRA train end to end on the tiny model and say what they adapt.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    lora=(--set peft.method=lora --set "peft.targets=[q_proj,v_proj,w1,w2,w3]" --set peft.train_router=true)
    run c.yaml "${lora[@]}" --set peft.r=2 --set checkpoint.export_hf=true
    expect_rc 0
    expect_has "LoRA: r 2" "trainable params" "exported the adapter"
    [ -s run/metrics.jsonl ] || fail "LoRA run wrote no metrics"
    [ -s run/adapter/adapter_config.json ] && [ -s run/adapter/adapter_model.safetensors ] ||
      fail "a LoRA run with checkpoint.export_hf wrote no PEFT adapter"
    [ -e run/hf ] && fail "a LoRA run exported a full model instead of its adapter"
    cp -r run/adapter ad
    # Continuing that adapter: peft.* must agree with it (exit 2 naming both values), then it trains.
    run c.yaml "${lora[@]}" --set peft.r=4 --set "model.adapter_from=$T/ad" --set run.overwrite=true
    expect_bad_input "has r = 2 but peft.r = 4"
    run c.yaml "${lora[@]}" --set peft.r=2 --set "peft.targets=[q_proj,w1,w2,w3]" --set "model.adapter_from=$T/ad" \
        --set run.overwrite=true
    expect_bad_input "adapts q_proj, v_proj" "peft.targets resolves to q_proj, gate_proj"
    run c.yaml "${lora[@]}" --set peft.r=2 --set "model.adapter_from=$T/ad" --set run.overwrite=true
    expect_rc 0
    run c.yaml "${lora[@]}" --set peft.r=2 --set "model.adapter_from=$T/nothing" --set run.overwrite=true
    expect_bad_input "adapter_config.json"
    run c.yaml --set peft.method=qlora --set "peft.targets=[all-linear]" --set peft.double_quant=true \
        --set run.overwrite=true
    expect_rc 0
    expect_has "QLoRA: r 8" "NF4 + double quant"
    ;;
  world_without_dry_run)
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --world 2
    expect_bad_input "--world" "not implemented yet without --dry-run"
    [ -e run/metrics.jsonl ] && fail "--world without --dry-run trained anyway"
    run c.yaml --dry-run --world 2
    expect_rc 0
    expect_has "world 2 = ep 1 x expert-dp 2"
    ;;
  memory_plan_exceeds)
    # ~1.7T parameters (26 TB of fp32 state) on one rank: no machine holds it. A real run stops before
    # allocating with exit 2 and the plan (not bad_alloc / exit 1 / the OOM killer); a dry run warns, exit 0.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    huge=(--set model.hidden_size=8192 --set model.intermediate_size=32768 --set model.num_layers=32
          --set model.num_heads=64 --set model.num_kv_heads=8 --set model.num_experts=64)
    start=$(date +%s)
    run c.yaml "${huge[@]}"
    expect_bad_input "does not fit in memory" "available" "weights" "optimizer" "total" "MOE_MEMORY_CHECK=off"
    [ $(($(date +%s) - start)) -le 30 ] || fail "the refusal took more than 30 s (did it allocate?)"
    run c.yaml --dry-run "${huge[@]}"
    expect_rc 0
    expect_has "warning: the plan needs" "this machine:" "(1.7T)" "on this machine a real run would stop"
    grep -q "checks passed: a real run" all.txt && fail "the dry run says a real run starts, but it would stop"
    # Sizes whose per-token state alone would not fit are planned without allocating it (was bad_alloc).
    run c.yaml --dry-run --set train.seq_len=2147483647
    expect_bad_input "shorter than one window"
    grep -q "bad_alloc" all.txt && fail "the dry run allocated per-token state"
    ;;
  unsupported_device)
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.device=cuda
    expect_bad_input cuda
    [ "$(wc -c <all.txt)" -gt 20 ] || fail "no message"
    ;;
  cuda_device)
    # train.device: cuda. A build without CUDA refuses it (real and dry run, exit 2, make_backend's reason); a CUDA
    # build on a machine without a GPU refuses the real run (no GPU visible) and dry-runs the per-GPU plan with the
    # GPU unknown. parallel.backend: mpi + cuda and nccl + cpu are refused either way.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --dry-run --set train.device=cuda
    expect_has "per GPU (one rank each)"
    if grep -qF "built without CUDA" all.txt; then
      expect_bad_input "train.device: cuda: this moe-train was built without CUDA" "use train.device: cpu"
      run c.yaml --set train.device=cuda
      expect_bad_input "train.device: cuda: this moe-train was built without CUDA"
    elif ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
      expect_rc 0
      expect_has "GPU memory: unknown" "checks passed"
      run c.yaml --set train.device=cuda
      expect_bad_input "train.device: cuda: no GPU is visible"
    fi
    [ -e run/metrics.jsonl ] && fail "trained without a GPU"
    run c.yaml --set train.device=cuda --set parallel.backend=mpi
    expect_bad_input "parallel.backend: mpi cannot move GPU memory"
    run c.yaml --dry-run --set parallel.backend=nccl
    expect_bad_input "parallel.backend: nccl moves GPU memory and needs train.device: cuda"
    # The CUDA path's environment settings are checked before a run (a bad value is exit 2 naming it).
    export MOE_NCCL_TIMEOUT_S=5s
    run c.yaml --dry-run --set train.device=cuda
    expect_bad_input "MOE_NCCL_TIMEOUT_S='5s': expected a number of seconds > 0"
    unset MOE_NCCL_TIMEOUT_S
    export MOE_CUDNN_ATTENTION=of
    run c.yaml --dry-run --set train.device=cuda
    expect_bad_input "MOE_CUDNN_ATTENTION='of': expected on"
    unset MOE_CUDNN_ATTENTION
    ;;
  diverged)
    # A huge learning rate without clipping: NaN/Inf → exit 3 naming the step and a tensor; the
    # checkpoint of step 1 (written before) stays the newest complete one.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.lr=1e30 --set train.grad_clip=0 --set train.steps=50 --set checkpoint.every=1
    expect_rc 3
    expect_has "training diverged at step" "first non-finite gradient" "weight"
    ;;
  export_refusals)
    # moe-export refuses what does not fit the checkpoint or the other flags (exit 2 naming the problem, nothing
    # written), and exports a LoRA checkpoint's adapter (both layouts) and its merge (seeded-init base).
    EXPORT="$(dirname "$BIN")/moe-export"
    runx() {  # runx ARGS...: runs moe-export like run() runs moe-train
      echo "+ moe-export $*" >&2
      timeout -k 5 90 "$EXPORT" "$@" >out.txt 2>err.txt
      RC=$?
      cat out.txt err.txt >all.txt
      sed 's/^/  | /' all.txt | head -20 >&2
    }
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set "run.dir=$T/full"
    expect_rc 0
    run c.yaml --set "run.dir=$T/lora" --set peft.method=lora --set "peft.targets=[q_proj,w1,w2,w3]"
    expect_rc 0
    full=$(ls full/checkpoints/step_*.h5 | tail -1)
    lora=$(ls lora/checkpoints/step_*.h5 | tail -1)
    [ -n "$full" ] && [ -n "$lora" ] || fail "the runs wrote no checkpoints"
    while IFS='|' read -r args msg; do
      rm -rf x
      # shellcheck disable=SC2086
      runx $args --out "$T/x"
      expect_bad_input "$msg"
      [ -e x ] && fail "a refused export ($args) wrote $T/x"
    done <<REFUSALS
$full --format peft|holds a full model (peft.method: full), not adapters
$full --merge|there is no adapter to merge
$lora|holds a LoRA/QLoRA adapter, not a full model
$lora --dtype bf16|holds a LoRA/QLoRA adapter, not a full model
$full --peft-layout per-expert|--peft-layout applies to --format peft only
$lora --format peft --merge|--merge writes a full model
$lora --format peft --dtype bf16|--dtype applies to full models
$lora --format peft --fused-experts|--fused-experts applies to full models
$lora --base $T/full|--base applies to --merge only
$lora --merge --base $T/nothing|$T/nothing
$lora --format peft --peft-layout both|--peft-layout
$T/nothing.h5 --format peft|$T/nothing.h5
REFUSALS
    # A base that is not the run's (the full run's trained weights): its frozen tensors differ from the checkpoint's.
    "$EXPORT" "$full" --out "$T/fullhf" >/dev/null 2>&1 || fail "exporting the full run failed"
    runx "$lora" --merge --base "$T/fullhf" --out "$T/x"
    expect_bad_input "is not the one" "was trained on: frozen tensor model.embed_tokens.weight differs"
    [ -e x ] && fail "a refused merge wrote $T/x"
    runx "$lora" --format peft --out "$T/ad"
    expect_rc 0
    expect_has "transformers 5 fused"
    [ -s ad/adapter_config.json ] && [ -s ad/adapter_model.safetensors ] || fail "--format peft wrote no adapter"
    runx "$lora" --format peft --peft-layout per-expert --out "$T/ad4"
    expect_rc 0
    grep -q '"w1"' ad4/adapter_config.json || fail "the per-expert adapter does not target the expert Linears (w1)"
    runx "$lora" --merge --out "$T/merged" --dtype bf16
    expect_rc 0
    expect_has "seeded init" "merged the LoRA adapter"
    [ -s merged/model.safetensors ] && [ -s merged/config.json ] || fail "--merge wrote no model"
    ;;
  export_replaces_weights)
    # A second moe-export into the same --out replaces the weight files of the first (a stale model.safetensors
    # beside new shards would be loaded instead of them), and leaves other files alone.
    EXPORT="$(dirname "$BIN")/moe-export"
    write_text corpus.txt
    run "$SRC/configs/tiny.yaml" --set train.steps=2 --set checkpoint.every=2 --set "data.path=$T/corpus.txt" \
      --set "run.dir=$T/run"
    expect_rc 0
    ck=$(ls run/checkpoints/step_2.h5 2>/dev/null)
    [ -n "$ck" ] || fail "no checkpoint written"
    mkdir -p out && echo keep >out/README.md
    "$EXPORT" "$ck" --out out >/dev/null 2>&1 || fail "first export failed"
    [ -f out/model.safetensors ] || fail "unsharded export wrote no model.safetensors"
    "$EXPORT" "$ck" --out out --max-shard-size 0.0002 >/dev/null 2>&1 || fail "sharded export failed"
    [ -f out/model.safetensors ] && fail "the unsharded file of the first export is still there beside the shards"
    [ -f out/model.safetensors.index.json ] || fail "sharded export wrote no index"
    n=$(ls out | grep -c '^model-.*-of-.*\.safetensors$')
    [ "$n" -ge 2 ] || fail "expected several shards, found $n"
    "$EXPORT" "$ck" --out out >/dev/null 2>&1 || fail "third export failed"
    [ -f out/model.safetensors.index.json ] && fail "the index of the sharded export is still there"
    [ "$(ls out | grep -c '^model-.*-of-.*\.safetensors$')" -eq 0 ] || fail "shards of the sharded export are still there"
    [ -f out/README.md ] || fail "an unrelated file in --out was removed"
    ;;
  peft_configs)
    # configs/mixtral_lora.yaml, mixtral_qlora.yaml and qwen3_moe_lora_router.yaml run as written on the bases the
    # project makes (tiny.yaml's export, its Qwen3-MoE variant); only paths and the step count are changed here.
    write_text corpus.txt
    write_text heldout.txt
    base=(--set train.steps=2 --set "data.path=$T/corpus.txt")
    run "$SRC/configs/tiny.yaml" "${base[@]}" --set "run.dir=$T/tiny"
    expect_rc 0
    run "$SRC/configs/tiny.yaml" "${base[@]}" --set "run.dir=$T/tiny_qwen3" --set model.arch=qwen3_moe
    expect_rc 0
    for c in "mixtral_lora|tiny|LoRA: r 16|frozen" "mixtral_qlora|tiny|NF4 + double quant|frozen" \
             "qwen3_moe_lora_router|tiny_qwen3|LoRA: r 16|trained"; do
      IFS='|' read -r name from want router <<<"$c"
      run "$SRC/configs/$name.yaml" "${base[@]}" --set "run.dir=$T/$name" --set "model.init_from=$T/$from/hf" \
        --set checkpoint.every=0 --set "eval.data=$T/heldout.txt"
      expect_rc 0
      expect_has "$want" "router $router" "exported the adapter" "eval after step 0 | loss" "eval after step 2 | loss"
      [ -s "$name/adapter/adapter_model.safetensors" ] || fail "$name wrote no adapter"
    done
    ;;
  demo_ok)
    write_text corpus.txt
    run "$SRC/configs/tiny.yaml" --set train.steps=5 --set "data.path=$T/corpus.txt" --set "run.dir=$T/run"
    expect_rc 0
    m=run/metrics.jsonl
    if [ ! -f $m ]; then
      fail "no $m"
    else
      [ "$(wc -l <$m)" -eq 5 ] || fail "$m has $(wc -l <$m) lines, expected 5"
      for k in step loss aux_loss z_loss lr grad_norm tokens tok_per_s step_time_s expert_utilization \
               load_imbalance routing_entropy dropped_frac; do
        [ "$(grep -c "\"$k\":" $m)" -eq 5 ] || fail "key $k is not on every line of $m"
      done
      tail -n 1 $m | grep -q '"expert_load":' || fail "the last line of $m has no expert_load"
      tail -n 1 $m | grep -q '"step":5[,}]' || fail "the last line of $m is not step 5"
    fi
    ;;
  deep_json_safetensors)
    # A shape nested 60,000 deep used to overflow the stack while the error message was built.
    make_model_dir model
    st_raw model/model.safetensors "{\"x\":{\"dtype\":\"F32\",\"shape\":$(repeat '[' 60000)$(repeat ']' 60000),\"data_offsets\":[0,4]}}" 4
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model"
    run c.yaml
    expect_bad_input model.safetensors "nested deeper than"
    [ "$(wc -c <all.txt)" -lt 4000 ] || fail "the message quotes the whole header ($(wc -c <all.txt) bytes of output)"
    ;;
  deep_json_config)
    make_model_dir model
    sed -i "s/\"hidden_act\": \"silu\"/\"hidden_act\": $(repeat '[' 60000)$(repeat ']' 60000)/" model/config.json
    write_tokens tok.bin 64
    write_init_yaml c.yaml "$T/model"
    run c.yaml
    expect_bad_input config.json "nested deeper than"
    run c.yaml --dry-run
    expect_bad_input config.json "nested deeper than"
    make_model_dir model  # a deep value where an integer belongs
    sed -i "s/\"hidden_size\": 8/\"hidden_size\": $(repeat '{' 1)\"a\": 1}/" model/config.json
    run c.yaml --dry-run
    expect_bad_input config.json hidden_size integer
    ;;
  odd_head_dim)
    # RoPE rotates pairs: an odd head_dim must be refused as input (it used to end in an internal check).
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set model.head_dim=3
    expect_bad_input model.head_dim even 3
    run c.yaml --set model.head_dim=3 --dry-run
    expect_bad_input model.head_dim even 3
    run c.yaml --set model.hidden_size=6 --dry-run  # 6 / 2 heads = 3
    expect_bad_input model.head_dim even 3
    make_model_dir model
    sed -i 's/"num_key_value_heads": 1,/"num_key_value_heads": 1, "head_dim": 5,/' model/config.json
    write_init_yaml c2.yaml "$T/model"
    run c2.yaml
    expect_bad_input config.json head_dim even 5
    run c2.yaml --dry-run
    expect_bad_input config.json head_dim even 5
    ;;
  data_not_regular)
    # A directory, a FIFO and a device as data.path: exit 2 naming the path and what it is (no hang, no bad_alloc).
    mkdir datadir
    write_tiny_yaml c.yaml "$T/datadir"
    run c.yaml
    expect_bad_input datadir directory
    mkfifo fifo
    write_tiny_yaml c.yaml "$T/fifo"
    run c.yaml
    expect_bad_input "$T/fifo" FIFO
    write_tiny_yaml c.yaml /dev/zero
    run c.yaml
    expect_bad_input /dev/zero "character device"
    run "$T/fifo"  # the run config itself: a FIFO must not block either
    expect_bad_input "$T/fifo" "not a regular file"
    ;;
  loss_spike)
    # lr 10 blows the loss up by orders of magnitude: the spike guard stops with exit 3 before the update of
    # the spiking step; no checkpoint or metrics line from that step on, earlier checkpoints are kept.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.lr=10 --set train.steps=30 --set checkpoint.every=1 --set checkpoint.keep=100
    expect_rc 3
    expect_has "loss spike at step" "train.max_loss_ratio"
    at=$(sed -n 's/.*loss spike at step \([0-9]*\).*/\1/p' all.txt | head -1)
    if [ -z "$at" ]; then fail "no step in the spike message"; else
      for f in run/checkpoints/step_*.h5; do
        [ -e "$f" ] || continue
        n=${f##*step_}; n=${n%.h5}
        [ "$n" -lt "$at" ] || fail "checkpoint $f was published at or after the spike (step $at)"
      done
      [ -e run/checkpoints/step_$((at - 1)).h5 ] || fail "the checkpoint before the spike (step $((at - 1))) is gone"
      last=$(tail -n 1 run/metrics.jsonl | sed 's/.*"step":\([0-9]*\).*/\1/')
      [ "$last" = $((at - 1)) ] || fail "metrics.jsonl ends at step $last, expected $((at - 1))"
    fi
    # The guard off: the same run is not stopped by it.
    rm -rf run
    run c.yaml --set train.lr=10 --set train.steps=30 --set train.max_loss_ratio=0
    grep -q "loss spike" all.txt && fail "train.max_loss_ratio=0 still stops on a spike"
    run c.yaml --set train.max_loss_ratio=0.5
    expect_bad_input train.max_loss_ratio
    ;;
  run_dir_lock)
    # A second run in a run.dir that a live run holds: exit 2 naming the holder's pid and host.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    "$BIN" c.yaml --set train.steps=1000000 --set log.every=100000 >first.txt 2>&1 &
    first=$!
    for _ in $(seq 1 200); do [ -s run/metrics.jsonl ] && break; sleep 0.05; done
    run c.yaml --set run.overwrite=true
    expect_bad_input "is in use by another moe-train run" "pid $first" "host $(hostname)"
    kill -9 "$first"; wait "$first" 2>/dev/null
    # The OS dropped the dead holder's lock: the next run may start (over its files only with overwrite).
    run c.yaml --set run.overwrite=true
    expect_rc 0
    ;;
  run_dir_overwrite)
    # A finished run's checkpoints are not silently replaced by a new run in the same run.dir.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.steps=6 --set checkpoint.every=2
    expect_rc 0
    run c.yaml --set train.steps=3
    expect_bad_input "holds checkpoints of an earlier run" "step_6.h5" "--resume auto" "run.overwrite"
    [ -e run/checkpoints/step_6.h5 ] || fail "the refused run removed step_6.h5"
    run c.yaml --set train.steps=8 --resume auto
    expect_rc 0
    expect_has "resumed from"
    run c.yaml --set train.steps=3 --set run.overwrite=true
    expect_rc 0
    ls run/checkpoints >ls.txt
    grep -q step_3.h5 ls.txt || fail "no step_3.h5 after the overwriting run"
    grep -Eq 'step_(4|6|8)\.h5' ls.txt && fail "checkpoints of the earlier run remain: $(tr '\n' ' ' <ls.txt)"
    grep -qx step_3.h5 run/checkpoints/latest || fail "latest does not name step_3.h5"
    ;;
  signal_during_startup)
    # SIGUSR1 while the model is still being built (a large vocabulary makes that take a while): the
    # handler is there from process start, so the run stops cleanly before step 1 instead of dying.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    "$BIN" c.yaml --set model.vocab_size=200000 --set model.hidden_size=64 >out.txt 2>err.txt &
    pid=$!
    # USR1 (signal 10) is bit 9 of SigCgt once a handler is installed (the shell that forks moe-train
    # catches USR1 too: wait until the process is moe-train itself).
    for _ in $(seq 1 400); do
      cgt=$(sed -n 's/^SigCgt:\s*//p' /proc/$pid/status 2>/dev/null)
      [ "$(readlink /proc/$pid/exe)" = "$(readlink -f "$BIN")" ] && [ -n "$cgt" ] && [ $((0x$cgt >> 9 & 1)) -eq 1 ] && break
      sleep 0.01
    done
    kill -USR1 "$pid"
    wait "$pid"; RC=$?
    cat out.txt err.txt >all.txt
    expect_rc 0
    expect_has "stop signal before step 1"
    [ -e run/checkpoints/latest ] && fail "a checkpoint was written although no step ran"
    ;;
  ckpt_unchecksummed_format)
    # A checkpoint rewritten in HDF5's old format (no metadata checksums, as plain h5repack writes it) is
    # refused before libhdf5 decodes it: exit 2 for an explicit path, skipped by --resume auto.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set checkpoint.every=1
    expect_rc 0
    h5repack run/checkpoints/step_2.h5 old.h5 || fail "h5repack failed"
    [ "$(od -An -tu1 -j8 -N1 old.h5 | tr -d ' ')" = 0 ] || fail "h5repack did not write superblock version 0"
    run c.yaml --resume "$T/old.h5" --set train.steps=3
    expect_bad_input "old.h5" "superblock of version 0"
    cp old.h5 run/checkpoints/step_2.h5
    run c.yaml --resume auto --set train.steps=3
    expect_rc 0
    expect_has "skipping checkpoint" "resumed from" "step_1.h5"
    # A FIFO named like a checkpoint is refused without blocking (auto skips it, a path is exit 2)
    mkfifo run/checkpoints/step_9.h5
    run c.yaml --resume "$T/run/checkpoints/step_9.h5" --set train.steps=12 --set run.overwrite=true
    expect_bad_input "step_9.h5" "not a regular file"
    run c.yaml --resume auto --set train.steps=4
    expect_rc 0
    expect_has "skipping checkpoint $T/run/checkpoints/step_9.h5"
    ;;
  metrics_resume_hostile)
    # The old metrics.jsonl of a resumed run may be anything: a FIFO is refused (no hang), a huge file without
    # newlines is streamed, not loaded (no bad_alloc), and dropped lines are reported.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.steps=3
    expect_rc 0
    mv run/metrics.jsonl good.jsonl
    mkfifo run/metrics.jsonl
    run c.yaml --resume auto --set train.steps=4
    expect_bad_input "metrics.jsonl' is not a regular file"
    rm run/metrics.jsonl
    cp good.jsonl run/metrics.jsonl
    truncate -s +3G run/metrics.jsonl  # 3 GB of zero bytes after the last line (sparse): one torn "line"
    ( ulimit -v 2000000; run c.yaml --resume auto --set train.steps=4; echo "$RC" >rc.txt )
    RC=$(cat rc.txt)
    expect_rc 0
    expect_has "dropped 1"
    n=$(grep -c '"step"' run/metrics.jsonl)
    [ "$n" -eq 4 ] || fail "metrics.jsonl holds $n step lines, expected 4"
    ;;
  run_dir_claims)
    # The directories are claimed before the model is built, checkpoint.dir outside run.dir has its own lock,
    # a rewind over newer checkpoints needs run.overwrite, a resume logs what it changes, --dry-run sees it all.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.steps=4 --set checkpoint.every=1 --set checkpoint.keep=10
    expect_rc 0
    # (a) refused before the model is built: a model far too big for this machine (memory check off) would
    #     end in bad_alloc (exit 1) if it were allocated first.
    MOE_MEMORY_CHECK=off run c.yaml --set model.vocab_size=2000000000 --set model.hidden_size=65536
    expect_bad_input "holds checkpoints of an earlier run"
    # (b) a checkpoint.dir that cannot be created: exit 2 before step 1 (nothing trained, no metrics)
    run c.yaml --set run.dir="$T/run_b" --set checkpoint.dir=/proc/nope/ckpt
    expect_bad_input "checkpoint.dir" "/proc/nope/ckpt"
    [ -e run_b/metrics.jsonl ] && fail "training ran although checkpoint.dir cannot be created"
    # (c) two live runs may not share a checkpoint.dir
    "$BIN" c.yaml --set run.dir="$T/run_c1" --set checkpoint.dir="$T/shared_ck" --set train.steps=1000000 \
      --set log.every=100000 >c1.txt 2>&1 &
    c1=$!
    for _ in $(seq 1 200); do [ -s run_c1/metrics.jsonl ] && break; sleep 0.05; done
    run c.yaml --set run.dir="$T/run_c2" --set checkpoint.dir="$T/shared_ck" --set run.overwrite=true
    expect_bad_input "checkpoint.dir '$T/shared_ck' is in use by another moe-train run" "pid $c1"
    kill -9 "$c1"; wait "$c1" 2>/dev/null
    # (d) a rewind to step 2 with steps 3 and 4 present: refused, then allowed with run.overwrite (they go)
    run c.yaml --set train.steps=6 --resume "$T/run/checkpoints/step_2.h5"
    expect_bad_input "newer than the resumed step 2" "step_4.h5" "run.overwrite"
    [ -e run/checkpoints/step_4.h5 ] || fail "the refused rewind removed step_4.h5"
    run c.yaml --set train.steps=3 --set run.overwrite=true --set model.rope_theta=7 \
      --resume "$T/run/checkpoints/step_2.h5"
    expect_rc 0
    expect_has "resume changes model.rope_theta: 1e+06 -> 7" "resume changes train.steps: 4 -> 3"
    [ -e run/checkpoints/step_4.h5 ] && fail "step_4.h5 of the abandoned branch is still there"
    grep -qx step_3.h5 run/checkpoints/latest || fail "latest does not name step_3.h5"
    # (e) --dry-run reports what the real run would refuse
    run c.yaml --dry-run
    expect_bad_input "holds checkpoints of an earlier run"
    run c.yaml --dry-run --set run.overwrite=true --resume "$T/nonexistent.h5"
    expect_bad_input "--resume:" "nonexistent.h5"
    run c.yaml --dry-run --set run.overwrite=true
    expect_rc 0
    # (f) a symlink in place of the lock file is refused, never followed
    echo keep >victim.txt
    mkdir -p run_f && ln -s "$T/victim.txt" run_f/.lock
    run c.yaml --set run.dir="$T/run_f"
    expect_bad_input "run.dir" ".lock"
    [ "$(cat victim.txt)" = keep ] || fail "the lock followed a symlink and wrote to its target"
    # (g) another run may not use a live run's default checkpoint dir as its checkpoint.dir
    "$BIN" c.yaml --set run.dir="$T/run_g" --set train.steps=1000000 --set log.every=100000 \
      --set checkpoint.every=50 >g.txt 2>&1 &
    g=$!
    for _ in $(seq 1 200); do [ -s run_g/metrics.jsonl ] && break; sleep 0.05; done
    run c.yaml --set run.dir="$T/run_g2" --set checkpoint.dir="$T/run_g/checkpoints"
    expect_bad_input "checkpoint.dir '$T/run_g/checkpoints' is in use by another moe-train run" "pid $g"
    # (h) the live run's checkpoint dir removed under it: the next checkpoint stops the run (non-zero, named)
    for _ in $(seq 1 400); do [ -e run_g/checkpoints/step_50.h5 ] && break; sleep 0.05; done
    rm -rf run_g/checkpoints
    for _ in $(seq 1 600); do kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$g" 2>/dev/null; then fail "the run went on after its checkpoint dir was removed"; kill -9 "$g"; fi
    wait "$g"; RC=$?
    cat g.txt >all.txt
    [ "$RC" -ne 0 ] && [ "$RC" -lt 128 ] || fail "exit $RC after the checkpoint dir was removed (expected 1..127)"
    # Caught before the next checkpoint, or (when the removal races a checkpoint already under way) by that
    # write or its publish, which names a file in the removed directory and the OS error.
    grep -qE "was removed or replaced during the run|run_g/checkpoints.*No such file or directory" all.txt ||
      fail "no message naming the removed checkpoint dir: $(tail -n 3 all.txt | tr '\n' ' ')"
    ;;
  recompute_key)
    # train.recompute: none|selective|full; anything else is exit 2 naming the key, the value and the choices.
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.recompute=sideways
    expect_bad_input train.recompute sideways none selective full
    run c.yaml --set train.recompute=full
    expect_rc 0
    # The dry-run plan shrinks: Mixtral (8 ranks) activations none > selective > full.
    head -c 20000 /dev/zero >tok.bin
    prev=
    for mode in none selective full; do
      run "$SRC/configs/mixtral.yaml" --dry-run --world 8 --set train.device=cpu --set train.precision=fp32 \
        --set "data.path=$T/tok.bin" --set train.recompute=$mode
      expect_rc 0
      gib=$(sed -n 's/^  activations *\([0-9.]*\) GiB.*/\1/p' out.txt | head -1)
      [ -n "$gib" ] || { fail "$mode: no 'activations N GiB' line"; continue; }
      if [ -n "$prev" ] && ! awk -v a="$gib" -v b="$prev" 'BEGIN { exit !(a < b) }'; then
        fail "recompute $mode: activations $gib GiB, not below the previous mode's $prev GiB"
      fi
      prev=$gib
    done
    ;;
  *)
    echo "unknown case '$CASE'" >&2
    exit 1
    ;;
esac

if [ "$FAILED" -ne 0 ]; then exit 1; fi
echo "PASS [$CASE]"
