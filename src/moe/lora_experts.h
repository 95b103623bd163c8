// Owns the experts of a LoRA/QLoRA run: SwiGLU MLPs over frozen base weights plus split-LoRA adapters per expert.
#pragma once
#include <vector>

#include "backend/dense_ops.h"
#include "core/arena.h"
#include "moe/dispatcher.h"

namespace moe {

// The adapter shapes of every local expert of a layer (peft/lora.h LoraSpec): gate and up share one A.
struct ExpertLoraShape {
  int r_gate_up = 0;       // rank of the gate_up adapter (0: none)
  int gate_up_blocks = 0;  // I-row blocks of its B: 1 (gate or up) or 2 (gate, then up)
  bool gate = false;       // which of gate/up the gate_up adapter covers
  bool up = false;
  int r_down = 0;          // rank of the down adapter (0: none)
  double scaling = 0;      // PEFT's alpha / r (or alpha / √r)
  double dropout = 0;      // LoRA dropout p on each adapter's input (training: needs the rows' pair keys)
};

// y = W2_j (silu(W1_j x + s·B_g (A x)) ⊙ (W3_j x + s·B_u (A x))) + s·B_d (A_d h) for the rows of each block (expert
// j), ΔW never formed (split LoRA: u = s·x·Aᵀ [rows, r], then u·Bᵀ is added to the GEMM output). Every product is a
// DenseOps linear on the block's rows, so the path is the same on every backend. Frozen base weights get no
// gradient (null ExpertGrads w1/w3/w2 entries: the weight-gradient GEMMs are skipped); adapter gradients are
// accumulated block by block in list order (EP order rule of experts.h). Expert dropout is not supported here
// (preflight refuses moe.expert_dropout with LoRA): with lora.dropout > 0, drop.keys (the rows' pair keys, set by
// MoeLayer in training) key the LoRA dropout of the gate_up input x (tag Gate) and the down input h (tag Down):
// u = s·dropout(x)·Aᵀ; backward regenerates the masked input and masks the adapter's input gradient alike.
template <typename T>
class LoraMlpExperts final : public Experts<T> {
 public:
  using A = acc_t<T>;
  // R: most rows at the experts per call. Reserves the saved activations and scratch in `arena`.
  LoraMlpExperts(DenseOps<T>& dense, i64 H, i64 I, i64 R, const ExpertLoraShape& lora, Arena& arena);
  void forward(T* y, const T* x, const std::vector<RowBlock>& blocks, const ExpertDropout& drop,
               const ExpertWeights<T>& w) override;
  void backward(T* dx, ExpertGrads<T>& g, const T* dy, const T* x, const std::vector<RowBlock>& blocks,
                const ExpertDropout& drop, const ExpertWeights<T>& w, MoeScratch<T>& s) override;

 private:
  DenseOps<T>& ops_;
  i64 H_, I_;
  ExpertLoraShape lora_;
  T *a_ = nullptr, *b_ = nullptr, *hact_ = nullptr;  // [R, I] saved
  T* u_gu_ = nullptr;  // [R, r_gate_up] s·x·A_guᵀ, saved
  T* u_dn_ = nullptr;  // [R, r_down] s·h·A_dnᵀ, saved
  T* v_ = nullptr;     // [R, max r] backward scratch
  T *xd_ = nullptr, *dxd_ = nullptr;  // [R, max(H, I)] LoRA dropout: masked adapter input, its gradient (scratch)
  std::byte* ws_ = nullptr;
};

}  // namespace moe
