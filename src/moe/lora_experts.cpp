// Owns the split-LoRA expert MLPs of LoRA/QLoRA runs (see lora_experts.h).
#include "moe/lora_experts.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

template <typename T>
LoraMlpExperts<T>::LoraMlpExperts(DenseOps<T>& dense, i64 H, i64 I, i64 R, const ExpertLoraShape& lora, Arena& a)
    : ops_(dense), H_(H), I_(I), lora_(lora) {
  const i64 rg = lora.r_gate_up, rd = lora.r_down;
  a.reserve(&a_, R * I);
  a.reserve(&b_, R * I);
  a.reserve(&hact_, R * I);
  if (rg > 0) a.reserve(&u_gu_, R * rg);
  if (rd > 0) a.reserve(&u_dn_, R * rd);
  if (rg > 0 || rd > 0) a.reserve(&v_, R * std::max(rg, rd));
  if (lora.dropout > 0 && (rg > 0 || rd > 0)) {
    a.reserve(&xd_, R * std::max(H, I));
    a.reserve(&dxd_, R * std::max(H, I));
  }
  // One workspace for the largest GEMM of a block (ops run one at a time).
  i64 ws = 0;
  const std::pair<i64, i64> dims[] = {{H, I}, {I, H}, {H, rg}, {rg, I}, {I, rd}, {rd, H}};
  for (const auto& d : dims) {
    if (d.first == 0 || d.second == 0) continue;
    ws = std::max({ws, ops_.linear_forward_workspace_bytes(R, d.first, d.second),
                   ops_.linear_backward_workspace_bytes(R, d.first, d.second)});
  }
  if (ws > 0) a.reserve(&ws_, ws);
}

namespace {
// The LoRA dropout of a block's adapter input (tag Gate for gate_up, Down for down), keyed by the block's pair keys.
LoraDropout block_dropout(const ExpertLoraShape& lora, const ExpertDropout& drop, i64 off, int tag) {
  return LoraDropout{lora.dropout, drop.seed, drop.step, 0, drop.keys + off, uint32_t(tag)};
}
constexpr int kTagGateUp = 4, kTagDown = 6;  // LoraProj::Gate, LoraProj::Down
}  // namespace

// contract: C4.expert
template <typename T>
void LoraMlpExperts<T>::forward(T* y, const T* x, const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                                const ExpertWeights<T>& w) {
  MT_CHECK(drop.p == 0, "expert dropout with LoRA experts (refused by preflight)");
  const bool dropout = lora_.dropout > 0 && drop.keys != nullptr;  // training with LoRA dropout
  const i64 H = H_, I = I_, rg = lora_.r_gate_up, rd = lora_.r_down;
  const double s = lora_.scaling;
  constexpr Accumulate kSet = Accumulate::Overwrite, kAdd = Accumulate::Add;
  for (const RowBlock& blk : blocks) {
    const i64 n = blk.rows, off = blk.row, j = blk.expert;
    if (n == 0) continue;
    const T* xb = x + off * H;
    T *ab = a_ + off * I, *bb = b_ + off * I, *hb = hact_ + off * I, *yb = y + off * H;
    ops_.linear_forward(ab, xb, w.w1[j], n, H, I, kSet, ws_);
    ops_.linear_forward(bb, xb, w.w3[j], n, H, I, kSet, ws_);
    if (rg > 0) {  // u = s·x·Aᵀ once for gate and up; then a += u·B_gᵀ, b += u·B_uᵀ
      T* u = u_gu_ + off * rg;
      const T* xin = xb;
      if (dropout) ops_.lora_dropout(xd_, xb, n, H, block_dropout(lora_, drop, off, kTagGateUp)), xin = xd_;
      ops_.linear_forward(u, xin, w.gu_a[j], n, H, rg, kSet, ws_);
      ops_.scale(u, u, s, n * rg);
      const T* B = w.gu_b[j];
      if (lora_.gate) ops_.linear_forward(ab, u, B, n, rg, I, kAdd, ws_), B += I * rg;
      if (lora_.up) ops_.linear_forward(bb, u, B, n, rg, I, kAdd, ws_);
    }
    ops_.swiglu_forward(hb, ab, bb, n * I);
    ops_.linear_forward(yb, hb, w.w2[j], n, I, H, kSet, ws_);
    if (rd > 0) {
      T* u = u_dn_ + off * rd;
      const T* hin = hb;
      if (dropout) ops_.lora_dropout(xd_, hb, n, I, block_dropout(lora_, drop, off, kTagDown)), hin = xd_;
      ops_.linear_forward(u, hin, w.dn_a[j], n, I, rd, kSet, ws_);
      ops_.scale(u, u, s, n * rd);
      ops_.linear_forward(yb, u, w.dn_b[j], n, rd, H, kAdd, ws_);
    }
  }
}

// With u = s·x·Aᵀ saved: v = dy·B (dB += dyᵀ·u = s·dyᵀ·x·Aᵀ), then dx += s·v·A and dA += s·vᵀ·x. With LoRA
// dropout x is the masked input (regenerated) and the s·v·A term is masked by the same draw before it is added.
template <typename T>
void LoraMlpExperts<T>::backward(T* dx, ExpertGrads<T>& g, const T* dy, const T* x,
                                 const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
                                 const ExpertWeights<T>& w, MoeScratch<T>& sc) {
  MT_CHECK(drop.p == 0, "expert dropout with LoRA experts (refused by preflight)");
  const bool dropout = lora_.dropout > 0 && drop.keys != nullptr;
  // dx_in += mask ⊙ (v·A) and dA += vᵀ·(mask ⊙ in) for one adapter of a block ([n, C] input, rank r).
  auto adapter_input_grad = [&](T* dxin, A* dA, const T* v, const T* in, const T* Aw, i64 n, i64 C, i64 r, i64 off,
                                int tag) {
    if (!dropout) return ops_.linear_backward(dxin, dA, v, in, Aw, n, C, r, Accumulate::Add, ws_);
    const LoraDropout d = block_dropout(lora_, drop, off, tag);
    ops_.lora_dropout(xd_, in, n, C, d);
    ops_.linear_backward(dxd_, dA, v, xd_, Aw, n, C, r, Accumulate::Overwrite, ws_);
    ops_.lora_dropout(dxd_, dxd_, n, C, d);
    ops_.add(dxin, dxin, dxd_, n * C);
  };
  const i64 H = H_, I = I_, rg = lora_.r_gate_up, rd = lora_.r_down;
  const double s = lora_.scaling;
  constexpr Accumulate kSet = Accumulate::Overwrite, kAdd = Accumulate::Add;
  auto grad = [](const std::vector<A*>& v, i64 j) { return v.empty() ? nullptr : v[size_t(j)]; };
  for (const RowBlock& blk : blocks) {
    const i64 n = blk.rows, off = blk.row, j = blk.expert;
    if (n == 0) continue;
    const T *xb = x + off * H, *dyb = dy + off * H, *ab = a_ + off * I, *bb = b_ + off * I, *hb = hact_ + off * I;
    T *dhb = sc.dh + off * I, *dab = sc.da + off * I, *dbb = sc.db + off * I, *dxb = dx + off * H;
    ops_.linear_backward(dhb, grad(g.w2, j), dyb, hb, w.w2[j], n, I, H, kSet, ws_);
    if (rd > 0) {
      T* v = v_ + off * rd;
      ops_.linear_backward(v, grad(g.dn_b, j), dyb, u_dn_ + off * rd, w.dn_b[j], n, rd, H, kSet, ws_);
      ops_.scale(v, v, s, n * rd);
      adapter_input_grad(dhb, grad(g.dn_a, j), v, hb, w.dn_a[j], n, I, rd, off, kTagDown);
    }
    ops_.swiglu_backward(dab, dbb, dhb, ab, bb, n * I);
    ops_.linear_backward(dxb, grad(g.w1, j), dab, xb, w.w1[j], n, H, I, kSet, ws_);
    ops_.linear_backward(dxb, grad(g.w3, j), dbb, xb, w.w3[j], n, H, I, kAdd, ws_);
    if (rg > 0) {
      T* v = v_ + off * rg;
      const T* u = u_gu_ + off * rg;
      const T* B = w.gu_b[j];
      A* dB = grad(g.gu_b, j);
      Accumulate vacc = kSet;
      if (lora_.gate) {
        ops_.linear_backward(v, dB, dab, u, B, n, rg, I, vacc, ws_);
        B += I * rg;
        if (dB) dB += I * rg;
        vacc = kAdd;
      }
      if (lora_.up) ops_.linear_backward(v, dB, dbb, u, B, n, rg, I, vacc, ws_);
      ops_.scale(v, v, s, n * rg);
      adapter_input_grad(dxb, grad(g.gu_a, j), v, xb, w.gu_a[j], n, H, rg, off, kTagGateUp);
    }
  }
}

template class LoraMlpExperts<float>;
template class LoraMlpExperts<double>;
template class LoraMlpExperts<bf16>;

}  // namespace moe
