# Owns the helpers shared by the checkpoint and MPI shell tests: a tiny config, a token file, a text corpus.
# usage: source common.sh; make_inputs DIR  → DIR/tokens.bin, DIR/tiny.yaml
#                          make_text FILE N → FILE holds N random lowercase letters (a text-format corpus)
make_inputs() {
  local d=$1
  python3 - "$d" <<'PY'
import random, struct, sys
random.seed(11)
with open(sys.argv[1] + "/tokens.bin", "wb") as f:
    f.write(b"".join(struct.pack("<I", random.randrange(64)) for _ in range(20000)))
PY
  cat > "$d/tiny.yaml" <<YAML
run: {dir: $d/run}
model: {arch: mixtral, vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4,
        num_kv_heads: 2, num_experts: 4, top_k: 2, init_std: 0.2}
moe: {capacity_factor: 1.25, aux_loss_coef: 0.05, z_loss_coef: 0.01, router_jitter: 0.05, expert_dropout: 0.1}
train: {seq_len: 16, micro_batch: 4, grad_accum: 2, steps: 40, lr: 0.01, warmup_steps: 2}
checkpoint: {every: 1, keep: 3}
log: {every: 1000}
data: {format: tokens, path: $d/tokens.bin}
YAML
}

make_text() {
  head -c "$2" /dev/urandom | od -An -v -tu1 -w1 | awk '{printf "%c", 97 + ($1 % 26)}' > "$1"
}
