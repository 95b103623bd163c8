// Owns CpuDenseOps<T>: the dense op table on the host, each op a thin call of a kernels/ref kernel (outputs, inputs, dims).
#include <algorithm>
#include <type_traits>

#include "backend/cpu/cpu_dense.h"
#include "core/error.h"
#include "kernels/math/elementwise.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/cross_entropy_ref.h"
#include "kernels/ref/gemm_ref.h"
#include "kernels/ref/rmsnorm_ref.h"
#include "kernels/ref/rope_ref.h"
#include "kernels/ref/swiglu_ref.h"

namespace moe {

namespace {

// The GEMM-backed ops by storage type. float/double: cblas through gemm_ref (beta 1 = Accumulate::Add), no
// workspace. A storage type adds its specialization (bf16 below) and instantiates CpuDenseOps<T> at the end.
template <typename T>
struct Gemm {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "Gemm<T>: float or double");
  static T beta(Accumulate acc) { return acc == Accumulate::Add ? T(1) : T(0); }
  static i64 forward_workspace_bytes(i64, i64, i64) { return 0; }
  static i64 backward_workspace_bytes(i64, i64, i64) { return 0; }
  static void forward(T* y, const T* x, const T* W, i64 N, i64 in, i64 out, Accumulate acc, void*) {
    linear_forward_ref<T>(y, x, W, N, in, out, beta(acc));
  }
  static void backward(T* dx, T* dW, const T* dy, const T* x, const T* W, i64 N, i64 in, i64 out, Accumulate acc,
                       void*) {
    linear_backward_ref<T>(dx, dW, dy, x, W, N, in, out, beta(acc));
  }
};

// bf16 (DESIGN §8): oneDNN GEMM with bf16 inputs and fp32 accumulation into an fp32 workspace, each bf16 output
// rounded once; weight gradients accumulate in fp32. Instantiated with CpuDenseOps<bf16>.
template <>
struct Gemm<bf16> {
  static i64 forward_workspace_bytes(i64 N, i64, i64 out) { return N * out * i64(sizeof(float)); }
  static i64 backward_workspace_bytes(i64 N, i64 in, i64) { return N * in * i64(sizeof(float)); }
  static void forward(bf16* y, const bf16* x, const bf16* W, i64 N, i64 in, i64 out, Accumulate acc, void* ws) {
    linear_forward_bf16(y, x, W, N, in, out, acc, static_cast<float*>(ws));
  }
  static void backward(bf16* dx, float* dW, const bf16* dy, const bf16* x, const bf16* W, i64 N, i64 in, i64 out,
                       Accumulate acc, void* ws) {
    linear_backward_bf16(dx, dW, dy, x, W, N, in, out, acc, static_cast<float*>(ws));
  }
};

template <typename T>
class CpuDenseOps final : public DenseOps<T> {
 public:
  using A = acc_t<T>;

  i64 linear_forward_workspace_bytes(i64 N, i64 in, i64 out) const override {
    return Gemm<T>::forward_workspace_bytes(N, in, out);
  }
  i64 linear_backward_workspace_bytes(i64 N, i64 in, i64 out) const override {
    return Gemm<T>::backward_workspace_bytes(N, in, out);
  }
  void linear_forward(T* y, const T* x, const T* W, i64 N, i64 in, i64 out, Accumulate acc, void* ws) override {
    Gemm<T>::forward(y, x, W, N, in, out, acc, ws);
  }
  void linear_backward(T* dx, A* dW, const T* dy, const T* x, const T* W, i64 N, i64 in, i64 out, Accumulate dx_acc,
                       void* ws) override {
    Gemm<T>::backward(dx, dW, dy, x, W, N, in, out, dx_acc, ws);
  }

  void rmsnorm_forward(T* y, A* rstd, const T* x, const A* w, i64 N, i64 C, double eps) override {
    rmsnorm_forward_ref<T>(y, rstd, x, w, N, C, eps);
  }
  i64 rmsnorm_backward_workspace_bytes(i64, i64) const override { return 0; }
  void rmsnorm_backward(T* dx, A* dw, const T* dy, const T* x, const A* w, const A* rstd, i64 N, i64 C,
                        void*) override {
    rmsnorm_backward_ref<T>(dx, dw, dy, x, w, rstd, N, C);
  }

  void rope_table(A* cos_t, A* sin_t, i64 L, i64 D, double theta) override {
    rope_table_ref<T>(cos_t, sin_t, L, D, theta);
  }
  void rope_apply(T* x, const A* cos_t, const A* sin_t, i64 B, i64 L, i64 NHx, i64 D, RopeDirection dir,
                  const int32_t* doc_start) override {
    rope_apply_ref<T>(x, cos_t, sin_t, B, L, NHx, D, dir, doc_start);
  }

  // Flash-style: lse [B, NH, L] is saved, backward recomputes P = exp(s − lse). Workspace: the kernel's
  // per-thread slots of acc_t<T> (attention_workspace_elems: sized by the thread count the ops run with).
  i64 attention_workspace_bytes(i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window) const override {
    (void)B;
    (void)NH;
    (void)NKV;
    return attention_workspace_elems<T>(L, D, window) * i64(sizeof(A));
  }
  void attention_forward(T* out, A* lse, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D,
                         i64 window, const int32_t* doc_start, void* ws) override {
    attention_forward_ref<T>(out, lse, q, k, v, B, L, NH, NKV, D, window, doc_start, static_cast<A*>(ws));
  }
  void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const A* lse, const T* q, const T* k,
                          const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D, i64 window, const int32_t* doc_start,
                          void* ws) override {
    attention_backward_ref<T>(dq, dk, dv, dout, out, lse, q, k, v, B, L, NH, NKV, D, window, doc_start,
                              static_cast<A*>(ws));
  }

  void swiglu_forward(T* h, const T* a, const T* b, i64 n) override { swiglu_forward_ref<T>(h, a, b, n); }
  void swiglu_backward(T* da, T* db, const T* dh, const T* a, const T* b, i64 n) override {
    swiglu_backward_ref<T>(da, db, dh, a, b, n);
  }

  double cross_entropy_forward(const T* logits, const int32_t* targets, i64 N, i64 V) override {
    return cross_entropy_forward_ref<T>(nullptr, logits, targets, N, V);
  }
  void cross_entropy_backward_inplace(T* logits, const int32_t* targets, i64 N, i64 V, double scale) override {
    cross_entropy_backward_inplace_ref<T>(logits, targets, N, V, scale);
  }

  void embedding_forward(T* x, const T* W, const int32_t* ids, i64 Tn, i64 H) override {
#pragma omp parallel for schedule(static)
    for (i64 t = 0; t < Tn; ++t)
      for (i64 h = 0; h < H; ++h) x[t * H + h] = W[i64(ids[t]) * H + h];
  }
  // Token order per row of dW (deterministic, no atomics): the sum order of a repeated id is fixed.
  void embedding_backward(A* dW, const T* dx, const int32_t* ids, i64 Tn, i64 H, int32_t pad_id) override {
    for (i64 t = 0; t < Tn; ++t) {
      if (ids[t] == pad_id) continue;
      for (i64 h = 0; h < H; ++h) {
        A& w = dW[i64(ids[t]) * H + h];
        w = math::embed_grad_add<T>(w, dx[t * H + h]);
      }
    }
  }

  // Small n runs serially without entering OpenMP at all (a serialized parallel region still allocates its team).
  void add(T* y, const T* a, const T* b, i64 n) override {
    if (n <= (i64(1) << 16)) {
      for (i64 i = 0; i < n; ++i) y[i] = math::add_round<T>(a[i], b[i]);
      return;
    }
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) y[i] = math::add_round<T>(a[i], b[i]);
  }
  void scale(T* y, const T* x, double s, i64 n) override {
    const A sa = A(s);
    if (n <= (i64(1) << 16)) {
      for (i64 i = 0; i < n; ++i) y[i] = math::scale_round<T>(x[i], sa);
      return;
    }
#pragma omp parallel for schedule(static)
    for (i64 i = 0; i < n; ++i) y[i] = math::scale_round<T>(x[i], sa);
  }
  void lora_dropout(T* y, const T* x, i64 N, i64 C, const LoraDropout& d) override {
    const Philox ph(d.seed, RngPurpose::LoraDropout);
    const A keep = A(1.0 / (1.0 - d.p));
#pragma omp parallel for schedule(static) if (N * C > (i64(1) << 14))
    for (i64 n = 0; n < N; ++n) {
      const uint64_t key = math::lora_dropout_key(d.keys, d.stream, n);
      for (i64 c = 0; c < C; ++c)
        y[n * C + c] = math::scale_round<T>(x[n * C + c], math::lora_dropout_factor<A>(ph, key, d.tag, c, C, d.step, d.p, keep));
    }
  }
  void copy(T* dst, const T* src, i64 n) override { std::copy(src, src + n, dst); }
  void fill_zero(T* dst, i64 n) override { std::fill(dst, dst + n, T(0)); }
};

}  // namespace

template <typename T>
std::unique_ptr<DenseOps<T>> make_cpu_dense_ops() {
  return std::make_unique<CpuDenseOps<T>>();
}

template std::unique_ptr<DenseOps<float>> make_cpu_dense_ops<float>();
template std::unique_ptr<DenseOps<double>> make_cpu_dense_ops<double>();
template std::unique_ptr<DenseOps<bf16>> make_cpu_dense_ops<bf16>();

}  // namespace moe
