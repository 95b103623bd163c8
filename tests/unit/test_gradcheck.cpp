// Owns the Gradcheck.* tests: central finite differences in double of every backward (kernels, router, experts, MoE layer, whole model) [C4.*].
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/arena.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/cross_entropy_ref.h"
#include "kernels/ref/gemm_ref.h"
#include "kernels/ref/rmsnorm_ref.h"
#include "kernels/ref/rope_ref.h"
#include "kernels/ref/swiglu_ref.h"
#include "model/model.h"
#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "moe/plan.h"
#include "moe/router.h"

namespace moe {
namespace {

using Vec = std::vector<double>;
constexpr double kEps = 1e-6;     // central-difference step
constexpr double kTiny = 1e-30;

Vec randn(size_t n, std::mt19937_64& g, double std = 1.0, double mean = 0.0) {
  std::normal_distribution<double> d(mean, std);
  Vec v(n);
  for (double& x : v) x = d(g);
  return v;
}

double dot(const Vec& a, const double* b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Outcome of one finite-difference comparison over a set of coordinates of one tensor.
struct Check {
  double max_diff = 0;   // max |numeric − analytic|
  double max_mag = 0;    // max(|numeric|, |analytic|)
  int checked = 0, skipped = 0;
  double rel() const { return max_diff / std::max(max_mag, kTiny); }
};

// Central differences of f at x[idx] against the analytic gradient g[idx]. `same` is asked after each
// perturbed evaluation whether the discrete decisions (top-k, capacity) are those of the base point; when
// they are not, or when the one-sided slopes disagree (a jump), the coordinate is skipped and counted.
Check fd(double* x, const double* g, const std::vector<size_t>& idx, const std::function<double()>& f,
         const std::function<bool()>& same = [] { return true; }) {
  Check c;
  const double f0 = f();
  for (size_t i : idx) {
    const double orig = x[i];
    x[i] = orig + kEps;
    const double fp = f();
    bool ok = same();
    x[i] = orig - kEps;
    const double fm = f();
    ok = ok && same();
    x[i] = orig;
    const double num = (fp - fm) / (2 * kEps);
    const double jump = std::abs((fp - f0) - (f0 - fm)) / kEps;  // ≈ eps·f'' when smooth
    if (!ok || jump > 1e-4 + 1e-3 * std::abs(g[i])) {
      ++c.skipped;
      continue;
    }
    ++c.checked;
    c.max_diff = std::max(c.max_diff, std::abs(num - g[i]));
    c.max_mag = std::max({c.max_mag, std::abs(num), std::abs(g[i])});
  }
  f();  // leave the state of the base point behind
  return c;
}

std::vector<size_t> all_idx(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

// Up to `k` distinct coordinates of [0, n), always including the first and last.
std::vector<size_t> some_idx(size_t n, size_t k, std::mt19937_64& g) {
  if (n <= k) return all_idx(n);
  std::vector<size_t> v = all_idx(n);
  std::shuffle(v.begin() + 1, v.end() - 1, g);
  v.resize(k - 1);
  v.push_back(n - 1);
  std::sort(v.begin(), v.end());
  return v;
}

// Worst relative error of the running test, printed by report() so runs show the tolerance achieved.
double g_worst = 0;
void report(const char* what) {
  std::printf("[ %s ] worst relative error %.2e\n", what, g_worst);
  g_worst = 0;
}

#define EXPECT_GRAD(check, tol, what)                                                                \
  do {                                                                                               \
    const Check& c_ = (check);                                                                       \
    g_worst = std::max(g_worst, c_.rel());                                                           \
    EXPECT_GT(c_.checked, 0) << (what);                                                              \
    EXPECT_GE(c_.checked, 9 * (c_.checked + c_.skipped) / 10) << (what) << ": too many skipped";     \
    EXPECT_GT(c_.max_mag, 0.0) << (what) << ": gradient is identically zero";                        \
    EXPECT_LE(c_.rel(), (tol)) << (what) << ": max|fd−analytic| " << c_.max_diff << " over max|g| "  \
                               << c_.max_mag;                                                        \
  } while (0)

// ---------------------------------------------------------------- kernels

TEST(Gradcheck, C4_layer_linear) {
  std::mt19937_64 g(1);
  const i64 N = 5, in = 7, out = 4;
  Vec x = randn(N * in, g), W = randn(out * in, g), R = randn(N * out, g), y(N * out);
  auto f = [&] {
    linear_forward_ref<double>(y.data(), x.data(), W.data(), N, in, out);
    return dot(R, y.data());
  };
  f();
  Vec dx(N * in, 0.0), dW(out * in, 0.0);
  linear_backward_ref<double>(dx.data(), dW.data(), R.data(), x.data(), W.data(), N, in, out);
  EXPECT_GRAD(fd(x.data(), dx.data(), all_idx(x.size()), f), 1e-8, "dx");
  EXPECT_GRAD(fd(W.data(), dW.data(), all_idx(W.size()), f), 1e-8, "dW");
  // dW accumulates; dx with beta 1 accumulates.
  Vec dW2(out * in, 1.0), dx2(N * in, 2.0);
  linear_backward_ref<double>(dx2.data(), dW2.data(), R.data(), x.data(), W.data(), N, in, out, 1.0);
  for (size_t i = 0; i < dW.size(); ++i) EXPECT_NEAR(dW2[i], dW[i] + 1.0, 1e-12);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx2[i], dx[i] + 2.0, 1e-12);
  report("C4_layer_linear");
}

TEST(Gradcheck, C4_rmsnorm) {
  std::mt19937_64 g(2);
  const double eps = 1e-5;
  // Whole rows [N, C] and the per-head use (q_norm/k_norm): [T·NH, D] rows sharing one w [D].
  struct Shape { i64 N, C; const char* name; };
  for (const Shape s : {Shape{6, 8, "rows"}, Shape{5 * 3, 4, "per-head T=5 NH=3 D=4"}}) {
    Vec x = randn(s.N * s.C, g), w = randn(s.C, g, 0.3, 1.0), R = randn(s.N * s.C, g), y(s.N * s.C), rstd(s.N);
    auto f = [&] {
      rmsnorm_forward_ref<double>(y.data(), rstd.data(), x.data(), w.data(), s.N, s.C, eps);
      return dot(R, y.data());
    };
    f();
    Vec dx(x.size()), dw(s.C, 0.0);
    rmsnorm_backward_ref<double>(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), s.N, s.C);
    EXPECT_GRAD(fd(x.data(), dx.data(), all_idx(x.size()), f), 1e-7, std::string("dx ") + s.name);
    EXPECT_GRAD(fd(w.data(), dw.data(), all_idx(w.size()), f), 1e-7, std::string("dw ") + s.name);
    // Forward against the formula w·x/sqrt(mean(x²)+eps).
    for (i64 n = 0; n < s.N; ++n) {
      double ss = 0;
      for (i64 c = 0; c < s.C; ++c) ss += x[n * s.C + c] * x[n * s.C + c];
      for (i64 c = 0; c < s.C; ++c)
        EXPECT_NEAR(y[n * s.C + c], w[c] * x[n * s.C + c] / std::sqrt(ss / double(s.C) + eps), 1e-12);
    }
  }
  report("C4_rmsnorm");
}

TEST(Gradcheck, C4_attention_rope) {
  std::mt19937_64 g(3);
  const i64 B = 2, L = 5, NH = 3, D = 8, half = D / 2;
  Vec cs(L * half), sn(L * half);
  rope_table_ref<double>(cs.data(), sn.data(), L, D, 10000.0);
  // Table: angle(p, i) = p · theta^(-2i/D); position 0 is the identity.
  for (i64 p = 0; p < L; ++p)
    for (i64 i = 0; i < half; ++i) {
      const double ang = double(p) * std::pow(10000.0, -2.0 * double(i) / double(D));
      EXPECT_NEAR(cs[p * half + i], std::cos(ang), 1e-6);
      EXPECT_NEAR(sn[p * half + i], std::sin(ang), 1e-6);
    }
  Vec x = randn(B * L * NH * D, g), R = randn(x.size(), g);
  // Forward then inverse returns the input (up to the fp32 table, HF computes the angles in fp32).
  Vec y = x;
  rope_apply_ref<double>(y.data(), cs.data(), sn.data(), B, L, NH, D, RopeDirection::Forward);
  double moved = 0;
  for (size_t i = 0; i < x.size(); ++i) moved = std::max(moved, std::abs(y[i] - x[i]));
  EXPECT_GT(moved, 0.1);
  for (i64 h = 0; h < NH * D; ++h) EXPECT_EQ(y[h], x[h]);  // row 0 = position 0
  rope_apply_ref<double>(y.data(), cs.data(), sn.data(), B, L, NH, D, RopeDirection::Inverse);
  double back = 0;
  for (size_t i = 0; i < x.size(); ++i) back = std::max(back, std::abs(y[i] - x[i]));
  EXPECT_LE(back, 1e-6);
  // Gradient: d/dx Σ R·rope(x) = rope⁻ᵀ… = the Inverse rotation of R.
  auto f = [&] {
    y = x;
    rope_apply_ref<double>(y.data(), cs.data(), sn.data(), B, L, NH, D, RopeDirection::Forward);
    return dot(R, y.data());
  };
  Vec dx = R;
  rope_apply_ref<double>(dx.data(), cs.data(), sn.data(), B, L, NH, D, RopeDirection::Inverse);
  EXPECT_GRAD(fd(x.data(), dx.data(), all_idx(x.size()), f), 1e-8, "rope dx");
  report("C4_attention_rope");
}

TEST(Gradcheck, C4_attention_gqa) {
  std::mt19937_64 g(4);
  const i64 B = 2, L = 5, NH = 4, NKV = 2, D = 3;
  Vec q = randn(B * L * NH * D, g), k = randn(B * L * NKV * D, g), v = randn(B * L * NKV * D, g);
  Vec R = randn(q.size(), g), out(q.size()), lse(B * NH * L), ws(attention_workspace_elems<double>(L, D, 0));
  auto f = [&] {
    attention_forward_ref<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D, 0,
                                  nullptr, ws.data());
    return dot(R, out.data());
  };
  f();
  Vec dq(q.size()), dk(k.size()), dv(v.size());
  attention_backward_ref<double>(dq.data(), dk.data(), dv.data(), R.data(), out.data(), lse.data(), q.data(),
                                 k.data(), v.data(), B, L, NH, NKV, D, 0, nullptr, ws.data());
  EXPECT_GRAD(fd(q.data(), dq.data(), all_idx(q.size()), f), 1e-7, "dq");
  EXPECT_GRAD(fd(k.data(), dk.data(), all_idx(k.size()), f), 1e-7, "dk");
  EXPECT_GRAD(fd(v.data(), dv.data(), all_idx(v.size()), f), 1e-7, "dv");
  // Causal: row 0 of each sequence attends only to itself, so out = v of its kv head.
  for (i64 b = 0; b < B; ++b)
    for (i64 h = 0; h < NH; ++h)
      for (i64 d = 0; d < D; ++d)
        EXPECT_NEAR(out[(b * L) * NH * D + h * D + d], v[(b * L) * NKV * D + (h / (NH / NKV)) * D + d], 1e-12);
  report("C4_attention_gqa");
}

// Sliding window N (transformers' sliding_window_causal_mask_function): query i sees keys i−N < j ≤ i only.
// Gradients by finite differences, and forward/backward equal to a direct masked softmax attention at a length
// that crosses the 64-row blocks (windows shorter and longer than a block), after a full-causal backward has
// left its values in the per-thread scratch.
TEST(Gradcheck, C4_attention_sliding_window) {
  std::mt19937_64 g(14);
  {
    const i64 B = 2, L = 6, NH = 4, NKV = 2, D = 3, W = 2;
    Vec q = randn(B * L * NH * D, g), k = randn(B * L * NKV * D, g), v = randn(B * L * NKV * D, g);
    Vec R = randn(q.size(), g), out(q.size()), lse(B * NH * L), ws(attention_workspace_elems<double>(L, D, W));
    auto f = [&] {
      attention_forward_ref<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D, W,
                                    nullptr, ws.data());
      return dot(R, out.data());
    };
    f();
    Vec dq(q.size()), dk(k.size()), dv(v.size());
    attention_backward_ref<double>(dq.data(), dk.data(), dv.data(), R.data(), out.data(), lse.data(), q.data(),
                                   k.data(), v.data(), B, L, NH, NKV, D, W, nullptr, ws.data());
    EXPECT_GRAD(fd(q.data(), dq.data(), all_idx(q.size()), f), 1e-7, "dq");
    EXPECT_GRAD(fd(k.data(), dk.data(), all_idx(k.size()), f), 1e-7, "dk");
    EXPECT_GRAD(fd(v.data(), dv.data(), all_idx(v.size()), f), 1e-7, "dv");
  }
  const i64 B = 1, L = 150, NH = 2, NKV = 1, D = 4;
  Vec q = randn(B * L * NH * D, g), k = randn(B * L * NKV * D, g), v = randn(B * L * NKV * D, g);
  Vec R = randn(q.size(), g), out(q.size()), lse(B * NH * L), ws(attention_workspace_elems<double>(L, D, 0));
  Vec dq(q.size()), dk(k.size()), dv(v.size());
  attention_forward_ref<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D, 0, nullptr, ws.data());
  attention_backward_ref<double>(dq.data(), dk.data(), dv.data(), R.data(), out.data(), lse.data(), q.data(),
                                 k.data(), v.data(), B, L, NH, NKV, D, 0, nullptr, ws.data());
  for (const i64 W : {1, 4, 70, 200}) {
    // The full-causal workspace is the largest: reused for every window (left-over values must not leak).
    attention_forward_ref<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D, W,
                                  nullptr, ws.data());
    attention_backward_ref<double>(dq.data(), dk.data(), dv.data(), R.data(), out.data(), lse.data(), q.data(),
                                   k.data(), v.data(), B, L, NH, NKV, D, W, nullptr, ws.data());
    // Direct: p_ij = softmax_j over i−W < j ≤ i of q_i·k_j/√D; out_i = Σ_j p_ij v_j; and its gradients.
    Vec wo(out.size(), 0.0), wq(q.size(), 0.0), wk(k.size(), 0.0), wv(v.size(), 0.0);
    double worst = 0;
    for (i64 h = 0; h < NH; ++h)
      for (i64 i = 0; i < L; ++i) {
        const i64 lo = std::max<i64>(0, i - W + 1);
        Vec s(size_t(L), 0.0), dp(size_t(L), 0.0);
        double mx = -1e300, sum = 0, rowdot = 0;
        for (i64 j = lo; j <= i; ++j) {
          for (i64 d = 0; d < D; ++d) s[size_t(j)] += q[size_t((i * NH + h) * D + d)] * k[size_t(j * D + d)];
          s[size_t(j)] /= std::sqrt(double(D));
          mx = std::max(mx, s[size_t(j)]);
        }
        for (i64 j = lo; j <= i; ++j) sum += (s[size_t(j)] = std::exp(s[size_t(j)] - mx));
        for (i64 j = 0; j < L; ++j) {
          const double p = j >= lo && j <= i ? s[size_t(j)] / sum : 0.0;
          s[size_t(j)] = p;
        }
        worst = std::max(worst, std::abs(lse[size_t(h * L + i)] - (mx + std::log(sum))));
        for (i64 j = lo; j <= i; ++j)
          for (i64 d = 0; d < D; ++d) {
            wo[size_t((i * NH + h) * D + d)] += s[size_t(j)] * v[size_t(j * D + d)];
            dp[size_t(j)] += R[size_t((i * NH + h) * D + d)] * v[size_t(j * D + d)];
            wv[size_t(j * D + d)] += s[size_t(j)] * R[size_t((i * NH + h) * D + d)];
          }
        for (i64 j = lo; j <= i; ++j) rowdot += s[size_t(j)] * dp[size_t(j)];
        for (i64 j = lo; j <= i; ++j) {
          const double ds = s[size_t(j)] * (dp[size_t(j)] - rowdot) / std::sqrt(double(D));
          for (i64 d = 0; d < D; ++d) {
            wq[size_t((i * NH + h) * D + d)] += ds * k[size_t(j * D + d)];
            wk[size_t(j * D + d)] += ds * q[size_t((i * NH + h) * D + d)];
          }
        }
      }
    auto maxdiff = [](const Vec& a, const Vec& b) {
      double m = 0;
      for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
      return m;
    };
    EXPECT_LE(worst, 1e-12) << "lse, window " << W;
    EXPECT_LE(maxdiff(out, wo), 1e-11) << "out, window " << W;
    EXPECT_LE(maxdiff(dq, wq), 1e-11) << "dq, window " << W;
    EXPECT_LE(maxdiff(dk, wk), 1e-11) << "dk, window " << W;
    EXPECT_LE(maxdiff(dv, wv), 1e-11) << "dv, window " << W;
  }
  report("C4_attention_sliding_window");
}

TEST(Gradcheck, C4_expert_swiglu) {
  std::mt19937_64 g(5);
  const i64 N = 12;
  Vec a = randn(N, g, 2.0), b = randn(N, g), R = randn(N, g), h(N);
  auto f = [&] {
    swiglu_forward_ref<double>(h.data(), a.data(), b.data(), N);
    return dot(R, h.data());
  };
  f();
  Vec da(N), db(N);
  swiglu_backward_ref<double>(da.data(), db.data(), R.data(), a.data(), b.data(), N);
  EXPECT_GRAD(fd(a.data(), da.data(), all_idx(N), f), 1e-8, "da");
  EXPECT_GRAD(fd(b.data(), db.data(), all_idx(N), f), 1e-8, "db");
  report("C4_expert_swiglu");
}

TEST(Gradcheck, C4_objective_cross_entropy) {
  std::mt19937_64 g(6);
  const i64 N = 4, V = 7;
  const double scale = 0.37;
  Vec x = randn(N * V, g, 2.0), losses(N);
  std::vector<int32_t> tgt{3, 0, 6, 3};
  auto f = [&] { return scale * cross_entropy_forward_ref<double>(losses.data(), x.data(), tgt.data(), N, V); };
  const double total = f() / scale;
  double s = 0;
  for (i64 n = 0; n < N; ++n) {
    double mx = x[n * V], se = 0;
    for (i64 v = 0; v < V; ++v) mx = std::max(mx, x[n * V + v]);
    for (i64 v = 0; v < V; ++v) se += std::exp(x[n * V + v] - mx);
    EXPECT_NEAR(losses[n], mx + std::log(se) - x[n * V + tgt[n]], 1e-12);
    s += losses[n];
  }
  EXPECT_NEAR(total, s, 1e-12);
  Vec dx = x;
  cross_entropy_backward_inplace_ref<double>(dx.data(), tgt.data(), N, V, scale);
  EXPECT_GRAD(fd(x.data(), dx.data(), all_idx(x.size()), f), 1e-8, "dlogits");
  report("C4_objective_cross_entropy");
}

// ---------------------------------------------------------------- router

TEST(Gradcheck, C4_router_combine_aux_z) {
  const i64 T = 7, H = 6, E = 5, K = 2;
  const RouterDims d{T, H, E, K};
  for (const TopkNorm norm : {TopkNorm::Renormalize, TopkNorm::Raw})
    for (const double temp : {0.7, 1.6})
      for (const bool with_bias : {false, true}) {
        SCOPED_TRACE(std::string(norm == TopkNorm::Raw ? "raw" : "renorm") + " temp " + std::to_string(temp) +
                     (with_bias ? " bias" : ""));
        std::mt19937_64 g(7 + int(temp * 10) + 100 * int(norm) + 1000 * with_bias);
        Vec x = randn(T * H, g), Wg = randn(E * H, g), R = randn(T * K, g), aux_dp = randn(E, g, 0.5);
        std::vector<float> bias{0.05f, -0.1f, 0.f, 0.2f, -0.02f};
        const float* bp = with_bias ? bias.data() : nullptr;
        const double z_scale = 0.3;
        Vec logits(T * E), probs(T * E), w(T * K);
        std::vector<int> idx(T * K), idx0;
        auto f = [&] {
          router_forward<double>(logits.data(), probs.data(), idx.data(), w.data(), x.data(), Wg.data(), bp, d,
                                 temp, norm);
          double s = dot(R, w.data());
          for (i64 t = 0; t < T; ++t)
            for (i64 e = 0; e < E; ++e) s += aux_dp[e] * probs[t * E + e];
          return s + z_scale * router_lse_sq_sum<double>(logits.data(), T, E) / double(T);
        };
        f();
        idx0 = idx;
        // Forward semantics: probs = softmax(logits/τ); top-k of probs+bias; weights = probs (÷ sum).
        for (i64 t = 0; t < T; ++t) {
          double mx = -1e300, se = 0, ws = 0;
          for (i64 e = 0; e < E; ++e) mx = std::max(mx, logits[t * E + e] / temp);
          for (i64 e = 0; e < E; ++e) se += std::exp(logits[t * E + e] / temp - mx);
          for (i64 e = 0; e < E; ++e) EXPECT_NEAR(probs[t * E + e], std::exp(logits[t * E + e] / temp - mx) / se, 1e-14);
          for (i64 k = 0; k < K; ++k) ws += probs[t * E + idx[t * K + k]];
          for (i64 k = 0; k < K; ++k)
            EXPECT_NEAR(w[t * K + k], probs[t * E + idx[t * K + k]] / (norm == TopkNorm::Raw ? 1.0 : ws), 1e-14);
        }
        auto same = [&] { return idx == idx0; };
        Vec dxr(T * H), dWg(E * H, 0.0), dl(T * E);
        router_backward<double>(dxr.data(), dWg.data(), dl.data(), R.data(), logits.data(), probs.data(), idx.data(),
                                w.data(), x.data(), Wg.data(), aux_dp.data(), z_scale, d, temp, norm);
        EXPECT_GRAD(fd(x.data(), dxr.data(), all_idx(x.size()), f, same), 1e-7, "router dx");
        EXPECT_GRAD(fd(Wg.data(), dWg.data(), all_idx(Wg.size()), f, same), 1e-7, "router dWg");
      }
  report("C4_router_combine_aux_z");
}

// The harness itself: near a top-k tie the discrete decision flips within ±eps; such coordinates must be
// skipped (by the decision check, and by the jump test alone when no decision check is given), not compared.
TEST(Gradcheck, C4_router_tie_coordinates_are_skipped) {
  const i64 T = 3, H = 4, E = 3, K = 1;
  const RouterDims d{T, H, E, K};
  std::mt19937_64 g(12);
  Vec x = randn(T * H, g), Wg = randn(E * H, g), R = randn(T * K, g, 1.0, 3.0);
  for (i64 h = 0; h < H; ++h) Wg[1 * H + h] = Wg[0 * H + h];  // experts 0 and 1 tie for every token
  Wg[1 * H + 0] += 1e-9;
  Vec logits(T * E), probs(T * E), w(T * K);
  std::vector<int> idx(T * K);
  auto f = [&] {
    router_forward<double>(logits.data(), probs.data(), idx.data(), w.data(), x.data(), Wg.data(), nullptr, d, 1.0,
                           TopkNorm::Raw);
    return dot(R, w.data());
  };
  f();
  const std::vector<int> idx0 = idx;
  ASSERT_TRUE(idx0[0] == 0 || idx0[0] == 1);
  Vec dxr(T * H), dWg(E * H, 0.0), dl(T * E);
  router_backward<double>(dxr.data(), dWg.data(), dl.data(), R.data(), logits.data(), probs.data(), idx.data(),
                          w.data(), x.data(), Wg.data(), nullptr, 0.0, d, 1.0, TopkNorm::Raw);
  const Check with_plan = fd(Wg.data(), dWg.data(), all_idx(Wg.size()), f, [&] { return idx == idx0; });
  const Check jump_only = fd(Wg.data(), dWg.data(), all_idx(Wg.size()), f);
  for (const Check* c : {&with_plan, &jump_only}) {
    EXPECT_GT(c->skipped, 0);
    EXPECT_GT(c->checked, 0);
    EXPECT_LE(c->rel(), 1e-7);
  }
}

// ---------------------------------------------------------------- experts

TEST(Gradcheck, C4_expert_combine_kept_and_dropped) {
  std::mt19937_64 g(8);
  const i64 T = 9, H = 6, I = 5, E = 4, K = 2;
  // Expert 3 is never chosen (a zero-token expert); capacity 0.5 → C = ceil(2.25) = 3 drops pairs.
  RoutingPlan plan(T, E, K);
  Vec probs = randn(T * E, g);
  for (i64 t = 0; t < T; ++t) {
    const int a = int(t % 3), b = int((a + 1 + (t / 3) % 2) % 3);
    plan.topk_idx[t * K] = a;
    plan.topk_idx[t * K + 1] = b;
  }
  build_plan<double>(plan, probs.data(), 0.5, DropPolicy::Probs);
  ASSERT_GT(plan.dropped, 2);
  ASSERT_EQ(plan.counts[3], 0);
  Vec x = randn(T * H, g), tw = randn(T * K, g, 0.5, 0.5), R = randn(T * H, g), out(T * H);
  std::vector<Vec> W1(E), W3(E), W2(E);
  ExpertWeights<double> w;
  for (i64 e = 0; e < E; ++e) {
    W1[e] = randn(I * H, g, 0.5);
    W3[e] = randn(I * H, g, 0.5);
    W2[e] = randn(H * I, g, 0.5);
    w.w1.push_back(W1[e].data());
    w.w3.push_back(W3[e].data());
    w.w2.push_back(W2[e].data());
  }
  const i64 TK = T * K;
  Vec xg(TK * H), a(TK * I), b(TK * I), hact(TK * I), y(TK * H), mask(TK * I);
  for (double& m : mask) m = (g() % 4 == 0) ? 0.0 : 1.0 / 0.75;  // inverted dropout p = 0.25
  for (const bool with_mask : {false, true}) {
    SCOPED_TRACE(with_mask ? "dropout mask" : "no mask");
    const double* mk = with_mask ? mask.data() : nullptr;  // [P, I] in plan (expert-major) row order
    ExpertMlpActs<double> acts{a.data(), b.data(), hact.data()};
    // dispatch → grouped expert MLPs → combine, all experts local (rows in plan order, counts per expert).
    auto f = [&] {
      dispatch_gather<double>(xg.data(), x.data(), plan, H);
      expert_mlp_forward<double>(y.data(), acts, xg.data(), mk, plan.counts, w, H, I);
      combine_forward<double>(out.data(), y.data(), tw.data(), plan, H);
      return dot(R, out.data());
    };
    f();
    Vec dx(T * H, 0.0), dtw(TK, 7.0), dy(TK * H), dh(TK * I), da(TK * I), db(TK * I), dxg(TK * H);
    std::vector<Vec> G1(E, Vec(I * H, 0.0)), G3(E, Vec(I * H, 0.0)), G2(E, Vec(H * I, 0.0));
    ExpertGrads<double> gr;
    for (i64 e = 0; e < E; ++e) {
      gr.w1.push_back(G1[e].data());
      gr.w3.push_back(G3[e].data());
      gr.w2.push_back(G2[e].data());
    }
    combine_backward<double>(dy.data(), dtw.data(), R.data(), y.data(), tw.data(), plan, H);
    // One source block per expert (no expert parallelism): the blocks are the per-expert counts.
    expert_mlp_backward<double>(dxg.data(), gr, dh.data(), da.data(), db.data(), dy.data(), acts, xg.data(), mk,
                                plan.counts, w, H, I);
    dispatch_scatter_add<double>(dx.data(), dxg.data(), plan, H);
    EXPECT_GRAD(fd(x.data(), dx.data(), all_idx(x.size()), f), 1e-7, "experts dx");
    EXPECT_GRAD(fd(tw.data(), dtw.data(), all_idx(tw.size()), f), 1e-7, "experts dtopk_w");
    for (i64 i = 0; i < TK; ++i) {
      if (!plan.kept[i]) {
        EXPECT_EQ(dtw[i], 0.0) << "dropped pair " << i;
      }
    }
    for (i64 e = 0; e < E; ++e) {
      if (plan.counts[e] == 0) {
        for (i64 i = 0; i < I * H; ++i) ASSERT_EQ(G1[e][i] + G3[e][i] + G2[e][i], 0.0) << "zero-token expert " << e;
        continue;
      }
      EXPECT_GRAD(fd(W1[e].data(), G1[e].data(), all_idx(I * H), f), 1e-7, "w1 of expert " + std::to_string(e));
      EXPECT_GRAD(fd(W3[e].data(), G3[e].data(), all_idx(I * H), f), 1e-7, "w3 of expert " + std::to_string(e));
      EXPECT_GRAD(fd(W2[e].data(), G2[e].data(), all_idx(H * I), f), 1e-7, "w2 of expert " + std::to_string(e));
    }
  }
  report("C4_expert_combine_kept_and_dropped");
}

// ---------------------------------------------------------------- MoE layer

struct LayerCase {
  const char* name;
  TopkNorm norm;
  DropPolicy policy;
  double capacity, jitter, dropout, temp;
};

TEST(Gradcheck, MoeLayer_C4_capacity_jitter_dropout) {
  const i64 Tn = 12, H = 8, E = 4, K = 2, I = 6;
  for (const LayerCase lc : {LayerCase{"renorm probs-drop jitter dropout", TopkNorm::Renormalize, DropPolicy::Probs, 0.75, 0.1, 0.2, 1.0},
                             LayerCase{"raw position-drop temp 0.8", TopkNorm::Raw, DropPolicy::Position, 0.6, 0.05, 0.1, 0.8},
                             LayerCase{"renorm dropless temp 1.3", TopkNorm::Renormalize, DropPolicy::Probs, 0.0, 0.2, 0.0, 1.3}}) {
    SCOPED_TRACE(lc.name);
    std::mt19937_64 g(9);
    MoeConfig mc;
    mc.capacity_factor = lc.capacity;
    mc.drop_policy = lc.policy;
    mc.router_jitter = lc.jitter;
    mc.expert_dropout = lc.dropout;
    mc.router_temperature = lc.temp;
    Arena arena;
    const ExpertShardSpec all_local{};
    const auto ops = make_cpu_moe_ops<double>();
    MoeScratch<double> ms{};
    MoeLayer<double> layer(*ops, Tn, H, E, K, I, mc, lc.norm, all_local, ms, arena);
    MoeScratch<double>::reserve(ms, arena, Tn, H, E, K, I, mc, all_local);
    arena.allocate();

    Vec x = randn(Tn * H, g), Wg = randn(E * H, g), R = randn(Tn * H, g), aux_dp = randn(E, g, 0.3), out(Tn * H);
    const double z_scale = 0.2;
    std::vector<Vec> W1(E), W3(E), W2(E);
    ExpertWeights<double> w;
    for (i64 e = 0; e < E; ++e) {
      W1[e] = randn(I * H, g, 0.4);
      W3[e] = randn(I * H, g, 0.4);
      W2[e] = randn(H * I, g, 0.4);
      w.w1.push_back(W1[e].data());
      w.w3.push_back(W3[e].data());
      w.w2.push_back(W2[e].data());
    }
    RngCtx rng;
    rng.seed = 42;
    rng.step = 3;
    rng.layer = 1;
    rng.global_micro = 2;
    // Objective: Σ R·out + Σ_e aux_dp[e]·Σ_t probs[t,e] + z_scale·mean_t lse² (what backward's arguments mean).
    auto f = [&] {
      layer.forward(out.data(), x.data(), Wg.data(), w, nullptr, rng, Mode::Train);
      const RouterStats& st = layer.stats();
      double s = dot(R, out.data());
      for (i64 e = 0; e < E; ++e) s += aux_dp[e] * st.prob_sum[e];
      return s + z_scale * st.lse_sq_sum / double(Tn);
    };
    f();
    if (lc.capacity > 0) {
      ASSERT_GT(layer.plan().dropped, 0) << "capacity must drop pairs in this case";
    }
    const std::vector<int> idx0 = layer.plan().topk_idx;
    const std::vector<uint8_t> kept0 = layer.plan().kept;
    auto same = [&] { return layer.plan().topk_idx == idx0 && layer.plan().kept == kept0; };
    // Jitter and dropout draws are counter-based: a second forward at the same point is bitwise the same.
    const Vec out0 = out;
    f();
    ASSERT_EQ(out, out0);

    Vec dx(Tn * H), dWg(E * H, 0.0);
    std::vector<Vec> G1(E, Vec(I * H, 0.0)), G3(E, Vec(I * H, 0.0)), G2(E, Vec(H * I, 0.0));
    ExpertGrads<double> gr;
    for (i64 e = 0; e < E; ++e) {
      gr.w1.push_back(G1[e].data());
      gr.w3.push_back(G3[e].data());
      gr.w2.push_back(G2[e].data());
    }
    layer.backward(dx.data(), R.data(), Wg.data(), w, dWg.data(), gr, aux_dp.data(), z_scale);
    EXPECT_GRAD(fd(x.data(), dx.data(), all_idx(x.size()), f, same), 1e-6, "moe dx");
    EXPECT_GRAD(fd(Wg.data(), dWg.data(), all_idx(Wg.size()), f, same), 1e-6, "moe dWg");
    for (i64 e = 0; e < E; ++e) {
      if (layer.plan().counts[e] == 0) continue;
      EXPECT_GRAD(fd(W1[e].data(), G1[e].data(), all_idx(I * H), f, same), 1e-6, "w1 e" + std::to_string(e));
      EXPECT_GRAD(fd(W3[e].data(), G3[e].data(), all_idx(I * H), f, same), 1e-6, "w3 e" + std::to_string(e));
      EXPECT_GRAD(fd(W2[e].data(), G2[e].data(), all_idx(H * I), f, same), 1e-6, "w2 e" + std::to_string(e));
    }
  }
  report("MoeLayer_C4_capacity_jitter_dropout");
}

// ---------------------------------------------------------------- whole model

struct ModelCase {
  const char* name;
  Arch arch;
  bool tied;
  bool norm_topk;
  std::vector<int> mlp_only;
  AuxForm form;
  DropPolicy policy;
  double capacity, temp;
};

void model_gradcheck(const ModelCase& mcase) {
  SCOPED_TRACE(mcase.name);
  ModelConfig m;
  m.arch = mcase.arch;
  m.vocab_size = 24;
  m.hidden_size = 16;
  m.intermediate_size = 12;  // Mixtral experts; Qwen3 dense MLP
  m.moe_intermediate_size = mcase.arch == Arch::Qwen3Moe ? 8 : 0;
  m.num_layers = mcase.arch == Arch::Qwen3Moe ? 3 : 2;
  m.num_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = 6;
  m.num_experts = 4;
  m.top_k = 2;
  m.norm_topk_prob = mcase.norm_topk;
  m.rope_theta = 10000.0;
  m.rms_norm_eps = 1e-6;
  m.tie_word_embeddings = mcase.tied;
  m.mlp_only_layers = mcase.mlp_only;
  MoeConfig mc;
  mc.capacity_factor = mcase.capacity;
  mc.drop_policy = mcase.policy;
  mc.aux_loss_coef = 0.3;
  mc.aux_loss_form = mcase.form;
  mc.z_loss_coef = 0.05;
  mc.router_jitter = 0.05;
  mc.expert_dropout = 0.15;
  mc.router_temperature = mcase.temp;
  const i64 B = 2, L = 5, Tn = B * L;
  Model<double> model(m, mc, B, L);
  const ParamTable& tab = model.table();
  const int Lm = model.num_moe_layers();
  ASSERT_EQ(Lm, m.num_layers - int(mcase.mlp_only.size()));

  std::mt19937_64 g(11);
  Vec P(tab.total_numel());
  for (const ParamInfo& p : tab.entries()) {
    const Vec v = p.is_norm ? randn(p.numel, g, 0.2, 1.0) : randn(p.numel, g, 0.35);
    std::copy(v.begin(), v.end(), P.begin() + p.offset);
  }
  std::vector<int32_t> in(Tn), tg(Tn);
  for (i64 t = 0; t < Tn; ++t) {
    in[t] = int32_t(g() % m.vocab_size);
    tg[t] = int32_t(g() % m.vocab_size);
  }
  in[1] = in[7];  // a repeated token: the embedding gradient is a scatter-add
  RngCtx rng;
  rng.seed = 5;
  rng.step = 1;
  rng.global_micro = 3;
  // The Model::backward contract: objective = ce_sum·ce + aux·aux_loss_value + z·z_loss_value.
  LossScales sc;
  sc.ce = 1.0 / double(Tn + 3);  // N counts the whole global batch
  sc.aux = mc.aux_loss_coef / 2.0;
  sc.z = mc.z_loss_coef / 2.0;
  MicroStats st;
  auto f = [&] {
    st = model.forward(P.data(), in.data(), tg.data(), {}, rng, Mode::Train);
    return st.ce_sum * sc.ce + sc.aux * aux_loss_value(st, m, mcase.form, nullptr) + sc.z * z_loss_value(st);
  };
  f();
  const MicroStats st0 = st;
  i64 dropped = 0;
  for (const auto& r : st0.router) dropped += r.dropped;
  if (mcase.capacity > 0) {
    ASSERT_GT(dropped, 0) << "capacity must drop pairs";
  }
  EXPECT_GT(aux_loss_value(st0, m, mcase.form, nullptr), 0.0);
  EXPECT_GT(z_loss_value(st0), 0.0);
  // The plan is private to the model: compare per-layer routed counts and drops (and the jump test in fd()).
  auto same = [&] {
    for (int l = 0; l < Lm; ++l)
      if (st.router[l].routed != st0.router[l].routed || st.router[l].dropped != st0.router[l].dropped) return false;
    return true;
  };
  Vec G(P.size(), 0.0);
  model.backward(P.data(), G.data(), in.data(), tg.data(), sc, mcase.form, nullptr);

  // Tensors whose gradient is (near) zero, e.g. an expert no token reached, compare against the model's
  // gradient scale: the OpenMP reduction in the CE sum leaves ~1e-16 of noise in f, i.e. ~1e-10 in a difference.
  double gscale = 0;
  for (double v : G) gscale = std::max(gscale, std::abs(v));
  int checked = 0, skipped = 0;
  double worst = 0;
  std::string worst_name;
  for (const ParamInfo& p : tab.entries()) {
    const Check c = fd(P.data(), G.data(), [&] {
      std::vector<size_t> v = some_idx(size_t(p.numel), 8, g);
      for (size_t& i : v) i += size_t(p.offset);
      return v;
    }(), f, same);
    checked += c.checked;
    skipped += c.skipped;
    if (c.checked == 0) continue;
    const double rel = c.max_diff / std::max(c.max_mag, 1e-3 * gscale);
    EXPECT_LE(rel, 1e-5) << p.name << ": max|fd−analytic| " << c.max_diff << " over max|g| " << c.max_mag;
    if (rel > worst) {
      worst = rel;
      worst_name = p.name;
    }
  }
  EXPECT_GE(checked, 9 * (checked + skipped) / 10) << "too many coordinates skipped for top-k/capacity flips";
  std::printf("[ %s ] %d coordinates checked, %d skipped, worst relative error %.2e (%s)\n", mcase.name, checked,
              skipped, worst, worst_name.c_str());
}

TEST(Gradcheck, Model_C4_objective_Mixtral) {
  model_gradcheck({"mixtral untied aux=layer probs-drop", Arch::Mixtral, false, true, {}, AuxForm::Layer,
                   DropPolicy::Probs, 1.0, 1.0});
  model_gradcheck({"mixtral tied aux=hf position-drop temp 0.8", Arch::Mixtral, true, true, {}, AuxForm::Hf,
                   DropPolicy::Position, 0.75, 0.8});
}

TEST(Gradcheck, Model_C4_objective_Qwen3Moe) {
  model_gradcheck({"qwen3 untied dense layer 0 raw-topk aux=layer", Arch::Qwen3Moe, false, false, {0},
                   AuxForm::Layer, DropPolicy::Probs, 1.0, 1.0});
  model_gradcheck({"qwen3 tied dense layer 1 renorm aux=hf temp 1.2", Arch::Qwen3Moe, true, true, {1}, AuxForm::Hf,
                   DropPolicy::Probs, 0.75, 1.2});
}

}  // namespace
}  // namespace moe
