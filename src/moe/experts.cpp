// Owns the CPU dispatch-gather, combine and grouped expert MLPs: one GEMM triple per expert over contiguous rows.
#include "moe/experts.h"

#include "kernels/ref/gemm_ref.h"
#include "kernels/ref/swiglu_ref.h"

namespace moe {

template <typename T>
void dispatch_gather(T* xg, const T* x, const RoutingPlan& plan, i64 H) {
  const i64 K = plan.K;
#pragma omp parallel for schedule(static)
  for (i64 r = 0; r < plan.P; ++r) {
    const T* src = x + (plan.row_pair[r] / K) * H;
    T* dst = xg + r * H;
    for (i64 h = 0; h < H; ++h) dst[h] = src[h];
  }
}

template <typename T>
void dispatch_scatter_add(T* dx, const T* dxg, const RoutingPlan& plan, i64 H) {
  const i64 K = plan.K;
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < plan.T; ++t) {
    T* d = dx + t * H;
    for (i64 k = 0; k < K; ++k) {
      const i64 r = plan.pair_row[t * K + k];
      if (r < 0) continue;
      const T* src = dxg + r * H;
      for (i64 h = 0; h < H; ++h) d[h] += src[h];
    }
  }
}

// contract: C4.combine
template <typename T>
void combine_forward(T* out, const T* y, const T* topk_w, const RoutingPlan& plan, i64 H) {
  const i64 K = plan.K;
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < plan.T; ++t) {
    T* o = out + t * H;
    for (i64 h = 0; h < H; ++h) o[h] = 0;
    for (i64 k = 0; k < K; ++k) {
      const i64 r = plan.pair_row[t * K + k];
      if (r < 0) continue;
      const T wk = topk_w[t * K + k];
      const T* yr = y + r * H;
      for (i64 h = 0; h < H; ++h) o[h] += wk * yr[h];
    }
  }
}

template <typename T>
void combine_backward(T* dy, T* dtopk_w, const T* dout, const T* y, const T* topk_w, const RoutingPlan& plan, i64 H) {
  const i64 K = plan.K;
#pragma omp parallel for schedule(static)
  for (i64 t = 0; t < plan.T; ++t) {
    const T* d = dout + t * H;
    for (i64 k = 0; k < K; ++k) {
      const i64 r = plan.pair_row[t * K + k];
      if (r < 0) {
        dtopk_w[t * K + k] = 0;
        continue;
      }
      const T wk = topk_w[t * K + k];
      const T* yr = y + r * H;
      T* dyr = dy + r * H;
      T acc = 0;
      for (i64 h = 0; h < H; ++h) {
        acc += d[h] * yr[h];
        dyr[h] = wk * d[h];
      }
      dtopk_w[t * K + k] = acc;
    }
  }
}

std::vector<RowBlock> contiguous_blocks(const std::vector<i64>& counts) {
  std::vector<RowBlock> b;
  i64 row = 0;
  for (size_t j = 0; j < counts.size(); ++j) {
    b.push_back({i64(j), row, counts[j]});
    row += counts[j];
  }
  return b;
}

// contract: C4.expert
template <typename T>
void expert_mlp_forward(T* y, ExpertMlpActs<T>& A, const T* x, const T* mask, const std::vector<RowBlock>& blocks,
                        const ExpertWeights<T>& w, i64 H, i64 I) {
  for (const RowBlock& b : blocks) {
    const i64 n = b.rows, off = b.row, j = b.expert;
    if (n == 0) continue;
    linear_forward_ref<T>(A.a + off * I, x + off * H, w.w1[j], n, H, I);
    linear_forward_ref<T>(A.b + off * I, x + off * H, w.w3[j], n, H, I);
    swiglu_forward_ref<T>(A.hact + off * I, A.a + off * I, A.b + off * I, n * I);
    if (mask)
      for (i64 i = off * I; i < (off + n) * I; ++i) A.hact[i] *= mask[i];
    linear_forward_ref<T>(y + off * H, A.hact + off * I, w.w2[j], n, I, H);
  }
}

template <typename T>
void expert_mlp_backward(T* dx, ExpertGrads<T>& g, T* dh, T* da, T* db, const T* dy, const ExpertMlpActs<T>& A,
                         const T* x, const T* mask, const std::vector<RowBlock>& blocks, const ExpertWeights<T>& w,
                         i64 H, i64 I) {
  for (const RowBlock& b : blocks) {
    const i64 n = b.rows, off = b.row, j = b.expert;
    if (n == 0) continue;
    linear_backward_ref<T>(dh + off * I, g.w2[j], dy + off * H, A.hact + off * I, w.w2[j], n, I, H);
    if (mask)
      for (i64 i = off * I; i < (off + n) * I; ++i) dh[i] *= mask[i];
    swiglu_backward_ref<T>(da + off * I, db + off * I, dh + off * I, A.a + off * I, A.b + off * I, n * I);
    linear_backward_ref<T>(dx + off * H, g.w1[j], da + off * I, x + off * H, w.w1[j], n, H, I);
    linear_backward_ref<T>(dx + off * H, g.w3[j], db + off * I, x + off * H, w.w3[j], n, H, I, T(1));
  }
}

#define MOE_INSTANTIATE(T)                                                                                         \
  template void dispatch_gather<T>(T*, const T*, const RoutingPlan&, i64);                                         \
  template void dispatch_scatter_add<T>(T*, const T*, const RoutingPlan&, i64);                                    \
  template void combine_forward<T>(T*, const T*, const T*, const RoutingPlan&, i64);                               \
  template void combine_backward<T>(T*, T*, const T*, const T*, const T*, const RoutingPlan&, i64);                \
  template void expert_mlp_forward<T>(T*, ExpertMlpActs<T>&, const T*, const T*, const std::vector<RowBlock>&,     \
                                      const ExpertWeights<T>&, i64, i64);                                          \
  template void expert_mlp_backward<T>(T*, ExpertGrads<T>&, T*, T*, T*, const T*, const ExpertMlpActs<T>&,         \
                                       const T*, const T*, const std::vector<RowBlock>&, const ExpertWeights<T>&,   \
                                       i64, i64);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
#undef MOE_INSTANTIATE
template void dispatch_gather<bf16>(bf16*, const bf16*, const RoutingPlan&, i64);

}  // namespace moe
