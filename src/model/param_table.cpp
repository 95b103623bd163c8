// Owns the parameter table and the HF tensor names of Mixtral and Qwen3-MoE (docs/DESIGN.md §4).
#include "model/param_table.h"

#include "core/error.h"
#include "peft/lora.h"

namespace moe {

void ParamTable::begin_unit() {
  ParamUnit u;
  u.begin = u.expert_begin = u.end = total_;
  units_.push_back(u);
  in_expert_ = false;
}

void ParamTable::mark_expert_begin() {
  MT_CHECK(!units_.empty() && !in_expert_, "expert segment opened twice");
  units_.back().expert_begin = total_;
  in_expert_ = true;
}

void ParamTable::pad_to(i64 multiple) {
  MT_CHECK(!units_.empty(), "pad outside a unit");
  const i64 seg_begin = in_expert_ ? units_.back().expert_begin : units_.back().begin;
  const i64 len = total_ - seg_begin;
  if (multiple > 1 && len % multiple) total_ += multiple - len % multiple;
}

void ParamTable::end_unit() {
  MT_CHECK(!units_.empty(), "end_unit without begin_unit");
  if (!in_expert_) units_.back().expert_begin = total_;
  units_.back().end = total_;
}

i64 ParamTable::tensor_numel() const {
  i64 n = 0;
  for (const ParamInfo& p : entries_) n += p.numel;
  return n;
}

void ParamTable::add(const std::string& name, std::vector<i64> shape, bool is_norm, bool expert) {
  MT_CHECK(index_.count(name) == 0, "duplicate parameter ", name);
  MT_CHECK(!units_.empty(), "parameter ", name, " added outside a unit");
  MT_CHECK(expert == in_expert_, "parameter ", name, " in the wrong segment");
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (i64 d : shape) p.numel *= d;
  p.shape = std::move(shape);
  p.offset = total_;
  p.decay = p.shape.size() >= 2;
  p.is_norm = is_norm;
  p.unit = int(units_.size()) - 1;
  p.expert = expert;
  p.byte_offset = dtype_bytes(p.dtype, p.offset);
  total_ += p.numel;
  index_[name] = entries_.size();
  entries_.push_back(std::move(p));
}

void ParamTable::set_trainable(const std::string& name, bool trainable) {
  auto it = index_.find(name);
  MT_CHECK(it != index_.end(), "no parameter named ", name);
  entries_[it->second].trainable = trainable;
}

void ParamTable::set_storage(const std::string& name, DType dtype, StorageKind kind) {
  auto it = index_.find(name);
  MT_CHECK(it != index_.end(), "no parameter named ", name);
  ParamInfo& p = entries_[it->second];
  p.dtype = dtype;
  p.kind = kind;
  p.byte_offset = dtype_bytes(dtype, p.offset);
}

i64 ParamTable::trainable_numel() const {
  i64 n = 0;
  for (const ParamInfo& p : entries_)
    if (p.trainable) n += p.numel;
  return n;
}

const ParamInfo* ParamTable::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const ParamInfo& ParamTable::at(const std::string& name) const {
  const ParamInfo* p = find(name);
  MT_CHECK(p != nullptr, "no parameter named ", name);
  return *p;
}

LayerNames layer_names(const ModelConfig& m, int l) {
  LayerNames n;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  n.input_norm = p + "input_layernorm.weight";
  n.post_norm = p + "post_attention_layernorm.weight";
  n.q = p + "self_attn.q_proj.weight";
  n.k = p + "self_attn.k_proj.weight";
  n.v = p + "self_attn.v_proj.weight";
  n.o = p + "self_attn.o_proj.weight";
  if (m.arch == Arch::Qwen3Moe) {
    n.q_norm = p + "self_attn.q_norm.weight";
    n.k_norm = p + "self_attn.k_norm.weight";
  }
  if (m.is_moe_layer(l)) {
    const bool mix = m.arch == Arch::Mixtral;
    const std::string blk = p + (mix ? "block_sparse_moe." : "mlp.");
    n.router = blk + "gate.weight";
    for (int e = 0; e < m.num_experts; ++e) {
      const std::string ex = blk + "experts." + std::to_string(e) + ".";
      n.w1.push_back(ex + (mix ? "w1.weight" : "gate_proj.weight"));
      n.w3.push_back(ex + (mix ? "w3.weight" : "up_proj.weight"));
      n.w2.push_back(ex + (mix ? "w2.weight" : "down_proj.weight"));
    }
  } else {
    n.dense_gate = p + "mlp.gate_proj.weight";
    n.dense_up = p + "mlp.up_proj.weight";
    n.dense_down = p + "mlp.down_proj.weight";
  }
  return n;
}

namespace {
// Which tensors a table holds: the full model (full fine-tuning, checkpoints of it, HF files), the state of a
// LoRA/QLoRA run (everything but the base linears, plus the adapters), or those base linears alone.
enum class TableKind { Full, PeftState, Base };

ParamTable build_table(const ModelConfig& m, const LoraSpec& lora, TableKind kind, ExpertRange range, i64 dense_pad,
                       i64 expert_pad) {
  ParamTable t;
  const i64 H = m.hidden_size, V = m.vocab_size, D = m.resolved_head_dim();
  const i64 NH = m.num_heads, NKV = m.num_kv_heads, E = m.num_experts, I = m.expert_width();
  const int first = range.count < 0 ? 0 : range.first;
  const int count = range.count < 0 ? int(E) : range.count;
  const bool state = kind != TableKind::Base;   // embeddings, norms, router, lm_head
  const bool base = kind != TableKind::PeftState;  // the linears LoRA adapts (frozen under PEFT)
  const bool peft = kind == TableKind::PeftState;
  auto close_dense = [&] { t.pad_to(dense_pad); };
  // The adapter pair of a linear [out, in] (PEFT state only), frozen-base entries in PEFT runs stay out.
  auto adapter = [&](const std::string& base_name, i64 out, i64 in, int r, bool expert) {
    t.add(lora_name(base_name, LoraPart::A), {r, in}, false, expert);
    t.add(lora_name(base_name, LoraPart::B), {out, r}, false, expert);
  };
  auto frozen = [&](const std::string& name) {
    if (peft) t.set_trainable(name, false);
  };
  t.begin_unit();
  if (state) {
    t.add("model.embed_tokens.weight", {V, H});
    frozen("model.embed_tokens.weight");
  }
  close_dense();
  t.end_unit();
  for (int l = 0; l < m.num_layers; ++l) {
    LayerNames n = layer_names(m, l);
    t.begin_unit();
    if (state) {
      t.add(n.input_norm, {H}, true);
      frozen(n.input_norm);
    }
    if (base) {
      t.add(n.q, {NH * D, H});
      t.add(n.k, {NKV * D, H});
      t.add(n.v, {NKV * D, H});
      t.add(n.o, {H, NH * D});
    }
    if (peft) {
      if (lora.targets(LoraProj::Q)) adapter(n.q, NH * D, H, lora.r, false);
      if (lora.targets(LoraProj::K)) adapter(n.k, NKV * D, H, lora.r, false);
      if (lora.targets(LoraProj::V)) adapter(n.v, NKV * D, H, lora.r, false);
      if (lora.targets(LoraProj::O)) adapter(n.o, H, NH * D, lora.r, false);
    }
    if (state) {
      if (!n.q_norm.empty()) {
        t.add(n.q_norm, {D}, true);
        t.add(n.k_norm, {D}, true);
        frozen(n.q_norm);
        frozen(n.k_norm);
      }
      t.add(n.post_norm, {H}, true);
      frozen(n.post_norm);
    }
    if (!n.router.empty()) {
      if (state) {
        t.add(n.router, {E, H});
        if (!lora.train_router) frozen(n.router);
      }
      close_dense();
      t.mark_expert_begin();
      if (base) {
        // [w1_e; w3_e] adjacent per expert, all of them contiguous, then every w2 (see the header).
        for (int e = first; e < first + count; ++e) {
          t.add(n.w1[e], {I, H}, false, true);
          t.add(n.w3[e], {I, H}, false, true);
        }
        for (int e = first; e < first + count; ++e) t.add(n.w2[e], {H, I}, false, true);
      }
      if (peft) {
        for (int e = first; e < first + count; ++e) {
          if (lora.gate_up_blocks() > 0)
            adapter(expert_gate_up_name(m, l, e), lora.gate_up_blocks() * I, H, lora.r_gate_up, true);
          if (lora.targets(LoraProj::Down)) adapter(expert_down_name(m, l, e), H, I, lora.r, true);
        }
      }
      t.pad_to(expert_pad);
    } else {
      if (base) {
        const i64 ID = m.intermediate_size;
        t.add(n.dense_gate, {ID, H});
        t.add(n.dense_up, {ID, H});
        t.add(n.dense_down, {H, ID});
      }
      close_dense();
    }
    t.end_unit();
  }
  t.begin_unit();
  if (state) {
    t.add("model.norm.weight", {H}, true);
    frozen("model.norm.weight");
    if (!m.tie_word_embeddings) {
      t.add("lm_head.weight", {V, H});
      frozen("lm_head.weight");
    }
  }
  close_dense();
  t.end_unit();
  return t;
}
}  // namespace

ParamTable build_param_table(const ModelConfig& m, ExpertRange range, i64 dense_pad, i64 expert_pad) {
  return build_table(m, LoraSpec{}, TableKind::Full, range, dense_pad, expert_pad);
}

ParamTable build_param_table(const ModelConfig& m, const LoraSpec& lora, ExpertRange range, i64 dense_pad,
                             i64 expert_pad) {
  return build_table(m, lora, lora.active() ? TableKind::PeftState : TableKind::Full, range, dense_pad, expert_pad);
}

ParamTable build_base_table(const ModelConfig& m, ExpertRange range) {
  return build_table(m, LoraSpec{}, TableKind::Base, range, 1, 1);
}

}  // namespace moe
