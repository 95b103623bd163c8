// Owns the CPU cross-entropy: max-shifted logsumexp in double per row.
#include "kernels/ref/cross_entropy_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/math/cross_entropy.h"

namespace moe {

template <typename T>
double logsumexp_row(const T* x, i64 V) {
  double mx = x[0];
  for (i64 v = 1; v < V; ++v) mx = x[v] > mx ? double(x[v]) : mx;
  double s = 0;
  for (i64 v = 0; v < V; ++v) s += std::exp(double(x[v]) - mx);
  return math::ce_row_loss(mx, s, 0.0);
}

// contract: C4.objective
// The sum is taken serially over per-row values so it is bitwise the same at any thread count.
template <typename T>
double cross_entropy_forward_ref(T* losses, const T* logits, const int32_t* targets, i64 N, i64 V) {
  thread_local std::vector<double> row;  // sized once per shape
  row.resize(size_t(N));
  double* rv = row.data();  // the caller's buffer: worker threads have their own thread_local instances
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const T* x = logits + n * V;
    rv[n] = targets[n] == kIgnoreTarget ? 0.0 : logsumexp_row(x, V) - double(x[targets[n]]);
    if (losses) losses[n] = T(rv[n]);
  }
  double total = 0;
  for (i64 n = 0; n < N; ++n) total += row[n];
  return total;
}

// softmax = exp(x − max) / Σ exp(x − max): one exp per logit (the row's exps kept in a per-thread buffer, so the row
// is read whole before dlogits is written: in-place use is safe).
// contract: C4.objective, B9
template <typename T>
void cross_entropy_backward_ref(T* dlogits, const T* logits, const int32_t* targets, i64 N, i64 V, double scale) {
  using A = acc_t<T>;
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    thread_local std::vector<double> ex;  // grown once per thread
    if (ex.size() < size_t(V)) ex.resize(size_t(V));
    const T* x = logits + n * V;
    T* dx = dlogits + n * V;
    const int32_t tgt = targets[n];
    if (tgt == kIgnoreTarget) {
      std::fill(dx, dx + V, T(0));
      continue;
    }
    double mx = x[0];
    for (i64 v = 1; v < V; ++v) mx = x[v] > mx ? double(x[v]) : mx;
    double s = 0;
    for (i64 v = 0; v < V; ++v) s += (ex[v] = std::exp(double(x[v]) - mx));
    const double k = scale / s;
    // The target's dlogit is A(k·ex) − A(scale) in A, rounded to T once.
    for (i64 v = 0; v < V; ++v) dx[v] = T(math::ce_dlogit<A>(k * ex[v], scale, v, tgt));
  }
}

template double logsumexp_row<float>(const float*, i64);
template double logsumexp_row<double>(const double*, i64);
template double cross_entropy_forward_ref<float>(float*, const float*, const int32_t*, i64, i64);
template double cross_entropy_forward_ref<double>(double*, const double*, const int32_t*, i64, i64);
template void cross_entropy_backward_ref<float>(float*, const float*, const int32_t*, i64, i64, double);
template void cross_entropy_backward_ref<double>(double*, const double*, const int32_t*, i64, i64, double);
template double logsumexp_row<bf16>(const bf16*, i64);
template double cross_entropy_forward_ref<bf16>(bf16*, const bf16*, const int32_t*, i64, i64);
template void cross_entropy_backward_ref<bf16>(bf16*, const bf16*, const int32_t*, i64, i64, double);

}  // namespace moe
