// Owns the CPU attention: plain loops, one (batch, kv head) group per OpenMP task, fp32 softmax.
#include "kernels/ref/attention_ref.h"

#include <cmath>
#include <limits>
#include <vector>

namespace moe {

// contract: C4.attention
template <typename T>
void attention_forward_ref(T* out, T* probs, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH,
                           i64 NKV, i64 D) {
  const i64 rep = NH / NKV, qs = NH * D, ks = NKV * D;
  const T scale = T(1.0 / std::sqrt(double(D)));
#pragma omp parallel for collapse(2) schedule(static)
  for (i64 b = 0; b < B; ++b)
    for (i64 h = 0; h < NH; ++h) {
      const i64 kvh = h / rep;
      T* P = probs + (b * NH + h) * L * L;
      for (i64 i = 0; i < L; ++i) {
        const T* qi = q + (b * L + i) * qs + h * D;
        T* Pi = P + i * L;
        T mx = -std::numeric_limits<T>::infinity();
        for (i64 j = 0; j <= i; ++j) {
          const T* kj = k + (b * L + j) * ks + kvh * D;
          T s = 0;
          for (i64 d = 0; d < D; ++d) s += qi[d] * kj[d];
          s *= scale;
          Pi[j] = s;
          mx = s > mx ? s : mx;
        }
        T sum = 0;
        for (i64 j = 0; j <= i; ++j) {
          Pi[j] = std::exp(Pi[j] - mx);
          sum += Pi[j];
        }
        const T inv = T(1) / sum;
        for (i64 j = 0; j <= i; ++j) Pi[j] *= inv;
        for (i64 j = i + 1; j < L; ++j) Pi[j] = 0;
        T* oi = out + (b * L + i) * qs + h * D;
        for (i64 d = 0; d < D; ++d) oi[d] = 0;
        for (i64 j = 0; j <= i; ++j) {
          const T pj = Pi[j];
          const T* vj = v + (b * L + j) * ks + kvh * D;
          for (i64 d = 0; d < D; ++d) oi[d] += pj * vj[d];
        }
      }
    }
}

template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                            const T* probs, i64 B, i64 L, i64 NH, i64 NKV, i64 D) {
  const i64 rep = NH / NKV, qs = NH * D, ks = NKV * D;
  const T scale = T(1.0 / std::sqrt(double(D)));
  // One task per (batch, kv head): the query heads of a group write the same dk/dv rows.
#pragma omp parallel for collapse(2) schedule(static)
  for (i64 b = 0; b < B; ++b)
    for (i64 kvh = 0; kvh < NKV; ++kvh) {
      for (i64 j = 0; j < L; ++j)
        for (i64 d = 0; d < D; ++d) {
          dk[(b * L + j) * ks + kvh * D + d] = 0;
          dv[(b * L + j) * ks + kvh * D + d] = 0;
        }
      std::vector<T> dS(L);
      for (i64 h = kvh * rep; h < (kvh + 1) * rep; ++h) {
        const T* P = probs + (b * NH + h) * L * L;
        for (i64 i = 0; i < L; ++i) {
          const T* Pi = P + i * L;
          const T* doi = dout + (b * L + i) * qs + h * D;
          // dP_ij = dO_i · V_j ; dV_j += P_ij dO_i
          T rowdot = 0;
          for (i64 j = 0; j <= i; ++j) {
            const T* vj = v + (b * L + j) * ks + kvh * D;
            T* dvj = dv + (b * L + j) * ks + kvh * D;
            T dp = 0;
            for (i64 d = 0; d < D; ++d) {
              dp += doi[d] * vj[d];
              dvj[d] += Pi[j] * doi[d];
            }
            dS[j] = dp;
            rowdot += dp * Pi[j];
          }
          // dS_ij = P_ij (dP_ij − Σ_j P dP) · scale ; dQ_i = Σ_j dS_ij K_j ; dK_j += dS_ij Q_i
          const T* qi = q + (b * L + i) * qs + h * D;
          T* dqi = dq + (b * L + i) * qs + h * D;
          for (i64 d = 0; d < D; ++d) dqi[d] = 0;
          for (i64 j = 0; j <= i; ++j) {
            const T ds = Pi[j] * (dS[j] - rowdot) * scale;
            const T* kj = k + (b * L + j) * ks + kvh * D;
            T* dkj = dk + (b * L + j) * ks + kvh * D;
            for (i64 d = 0; d < D; ++d) {
              dqi[d] += ds * kj[d];
              dkj[d] += ds * qi[d];
            }
          }
        }
      }
    }
}

template void attention_forward_ref<float>(float*, float*, const float*, const float*, const float*, i64,
                                           i64, i64, i64, i64);
template void attention_forward_ref<double>(double*, double*, const double*, const double*, const double*,
                                            i64, i64, i64, i64, i64);
template void attention_backward_ref<float>(float*, float*, float*, const float*, const float*,
                                            const float*, const float*, const float*, i64, i64, i64, i64,
                                            i64);
template void attention_backward_ref<double>(double*, double*, double*, const double*, const double*,
                                             const double*, const double*, const double*, i64, i64, i64,
                                             i64, i64);

}  // namespace moe
