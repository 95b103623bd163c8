// Owns a fake model for ParamState tests: reads every unit through ParamAccess like Model does and writes
// gradients that depend only on (tensor name, element, micro-batch, rank), chosen so every sum of them is exact.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "model/param_access.h"
#include "model/param_table.h"
#include "parallel/zero.h"

namespace moe::testing {

// The tiny Mixtral/Qwen3-MoE shape the ParamState tests lay out (8 hidden, 4 experts top-2, vocab 40).
inline ModelConfig tiny_state_model(Arch arch = Arch::Mixtral, bool tied = false, int layers = 2) {
  ModelConfig m;
  m.arch = arch;
  m.vocab_size = 40;
  m.hidden_size = 8;
  m.intermediate_size = 12;
  m.num_layers = layers;
  m.num_heads = 2;
  m.num_kv_heads = 1;
  m.num_experts = 4;
  m.top_k = 2;
  m.tie_word_embeddings = tied;
  if (arch == Arch::Qwen3Moe) {
    m.moe_intermediate_size = 6;
    m.head_dim = 4;
  }
  return m;
}

inline uint32_t name_hash(const std::string& s) {
  uint32_t h = 2166136261u;  // FNV-1a: the same on every rank and run
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

// Gradient of element i of tensor `name`: a multiple of 1/64 in [-0.25, 0.25] (sums over ranks and micro-batches
// are exact in fp32, so any reduction order gives the same bits).
inline float fake_grad(const std::string& name, i64 i, int micro, int rank) {
  const uint32_t k = (name_hash(name) + uint32_t(i) * 7u + uint32_t(micro) * 13u + uint32_t(rank) * 5u) % 33u;
  return float(int(k) - 16) / 64.f;
}

// One micro-batch: forward reads every unit in order, backward writes every unit's gradients in reverse order
// (the tied embedding's unit 0 is opened at the final unit and stays open, as Model does). `seen` (optional)
// receives the weights as read in the backward pass, in table layout, as fp32; `seen_acc` (optional) the unit's
// acc_t<T> values (ParamAccess::params_acc) likewise. Under expert parallelism an
// expert's gradient holds the tokens of its whole EP group: ep_ranks consecutive ranks from rank's group start.
template <typename T>
void fake_micro_batch(ParamAccess<T>& a, const ParamTable& t, int micro, int rank, std::vector<float>* seen = nullptr,
                      int ep_ranks = 1, std::vector<float>* seen_acc = nullptr) {
  using Dir = typename ParamAccess<T>::Direction;
  const int U = int(t.units().size());
  const bool tied = t.find("lm_head.weight") == nullptr;
  for (int u = 0; u < U; ++u) {
    const T* p = a.params(u, Dir::Forward);
    volatile float sink = float(p[0]);
    (void)sink;
    a.release(u);
  }
  if (seen) seen->assign(size_t(t.total_numel()), 0.f);
  if (seen_acc) seen_acc->assign(size_t(t.total_numel()), 0.f);
  std::vector<int> order;
  for (int u = U - 1; u >= 0; --u) order.push_back(u);
  if (tied) (void)a.grads(0);
  for (int u : order) {
    const i64 base = t.units()[u].begin;
    const T* p = a.params(u, Dir::Backward);
    const acc_t<T>* pa = a.params_acc(u);
    acc_t<T>* g = a.grads(u);
    for (const ParamInfo& e : t.entries()) {
      if (e.unit != u) continue;
      const int r0 = e.expert ? rank / ep_ranks * ep_ranks : rank, r1 = e.expert ? r0 + ep_ranks : rank + 1;
      for (i64 i = 0; i < e.numel; ++i) {
        for (int r = r0; r < r1; ++r) g[e.offset - base + i] += fake_grad(e.name, i, micro, r);
        if (seen) (*seen)[size_t(e.offset + i)] = float(p[e.offset - base + i]);
        if (seen_acc) (*seen_acc)[size_t(e.offset + i)] = float(pa[e.offset - base + i]);
      }
    }
    a.release(u);
    a.grads_done(u);
  }
}

// Seeded weights in table layout (ones for norms), the same values for the same name on any layout.
inline std::vector<float> fake_init(const ParamTable& t) {
  std::vector<float> w(size_t(t.total_numel()), 0.f);
  for (const ParamInfo& e : t.entries())
    for (i64 i = 0; i < e.numel; ++i)
      w[size_t(e.offset + i)] = e.is_norm ? 1.f : float(int((name_hash(e.name) + uint32_t(i) * 11u) % 101u) - 50) / 137.f;
  return w;
}

}  // namespace moe::testing
