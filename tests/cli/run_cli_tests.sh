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
    for spec in mixtral:46:47 qwen3_moe:30:31; do
      IFS=: read -r name lo hi <<<"$spec"
      run "$SRC/configs/$name.yaml" --dry-run --world 8  # both configs set parallel.ep 8
      expect_rc 0
      expect_has weights gradients optimizer activations
      params=$(sed -n 's/^parameters: \([0-9][0-9]*\) .*/\1/p' out.txt | head -1)
      if [ -z "$params" ]; then
        fail "$name: no 'parameters: N' line on stdout"
      elif [ "$params" -lt $((lo * 1000000000)) ] || [ "$params" -gt $((hi * 1000000000)) ]; then
        fail "$name: $params parameters, expected between ${lo}e9 and ${hi}e9"
      fi
    done
    ;;
  unsupported_device)
    write_tokens tok.bin 64
    write_tiny_yaml c.yaml "$T/tok.bin"
    run c.yaml --set train.device=cuda
    expect_bad_input cuda
    [ "$(wc -c <all.txt)" -gt 20 ] || fail "no message"
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
  *)
    echo "unknown case '$CASE'" >&2
    exit 1
    ;;
esac

if [ "$FAILED" -ne 0 ]; then exit 1; fi
echo "PASS [$CASE]"
