// Owns the Attention.* tests: the flash-style CPU attention (saved log-sum-exp, recomputed probabilities) against a
// naive double reference that materialises the probabilities, for float, double and bf16 (contract B6), causal and
// sliding window, GQA, odd lengths; thread-count determinism and workspace hygiene.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/bf16.h"
#include "kernels/ref/attention_ref.h"

namespace moe {
namespace {

using Vec = std::vector<double>;

struct Shape {
  i64 B, L, NH, NKV, D, window;
};

// Naive attention in double with explicit probabilities P [B, NH, L, L] (0 where masked), and its gradients.
// round_p: P is rounded to bf16 before P·V (the B6 forward); the backward always uses the unrounded P.
// out_in: the `out` the backward reads for D_i = Σ dout·out (null: the reference's own out).
// mag_*: Σ of |terms| of each output, the scale of its floating-point accumulation error.
struct Ref {
  Vec out, lse, dq, dk, dv, mag_out, mag_dq, mag_dk, mag_dv, flip_out;
};
Ref naive(const Shape& s, const Vec& q, const Vec& k, const Vec& v, const Vec& dout, bool round_p,
          const Vec* out_in = nullptr) {
  const i64 rep = s.NH / s.NKV, qs = s.NH * s.D, ks = s.NKV * s.D, L = s.L, D = s.D;
  const double scale = 1.0 / std::sqrt(double(D));
  Ref r;
  r.out.assign(q.size(), 0.0), r.mag_out = r.flip_out = r.dq = r.mag_dq = r.out;
  r.lse.assign(size_t(s.B * s.NH * L), 0.0);
  r.dk.assign(k.size(), 0.0), r.dv = r.mag_dk = r.mag_dv = r.dk;
  Vec P(static_cast<size_t>(L));
  for (i64 b = 0; b < s.B; ++b)
    for (i64 h = 0; h < s.NH; ++h) {
      const i64 kvh = h / rep;
      auto Q = [&](i64 i, i64 d) { return q[size_t((b * L + i) * qs + h * D + d)]; };
      auto K = [&](i64 j, i64 d) { return k[size_t((b * L + j) * ks + kvh * D + d)]; };
      auto V = [&](i64 j, i64 d) { return v[size_t((b * L + j) * ks + kvh * D + d)]; };
      auto dO = [&](i64 i, i64 d) { return dout[size_t((b * L + i) * qs + h * D + d)]; };
      for (i64 i = 0; i < L; ++i) {
        const i64 lo = s.window > 0 ? std::max<i64>(0, i - s.window + 1) : 0;
        double mx = -std::numeric_limits<double>::infinity(), sum = 0;
        for (i64 j = lo; j <= i; ++j) {
          double sc = 0;
          for (i64 d = 0; d < D; ++d) sc += Q(i, d) * K(j, d);
          P[size_t(j)] = sc * scale;
          mx = std::max(mx, P[size_t(j)]);
        }
        for (i64 j = lo; j <= i; ++j) sum += (P[size_t(j)] = std::exp(P[size_t(j)] - mx));
        for (i64 j = lo; j <= i; ++j) P[size_t(j)] /= sum;
        r.lse[size_t((b * s.NH + h) * L + i)] = mx + std::log(sum);
        const size_t oi = size_t((b * L + i) * qs + h * D);
        for (i64 j = lo; j <= i; ++j) {
          const double p = round_p ? double(round_bf16(float(P[size_t(j)]))) : P[size_t(j)];
          for (i64 d = 0; d < D; ++d) {
            r.out[oi + size_t(d)] += p * V(j, d);
            r.mag_out[oi + size_t(d)] += std::abs(p * V(j, d));
            // One P value on the other side of a bf16 rounding tie moves out by ≤ ulp(p)·|v| ≤ 2^-7·p·|v|.
            r.flip_out[oi + size_t(d)] = std::max(r.flip_out[oi + size_t(d)], std::ldexp(std::abs(p * V(j, d)), -7));
          }
        }
        const double* O = out_in ? out_in->data() + oi : nullptr;
        double Di = 0, Dmag = 0;
        for (i64 d = 0; d < D; ++d) {
          const double od = O ? O[d] : r.out[oi + size_t(d)];
          Di += dO(i, d) * od;
          Dmag += std::abs(dO(i, d) * od);
        }
        for (i64 j = lo; j <= i; ++j) {
          double dp = 0, dpm = 0;
          for (i64 d = 0; d < D; ++d) dp += dO(i, d) * V(j, d), dpm += std::abs(dO(i, d) * V(j, d));
          const double p = P[size_t(j)], ds = p * (dp - Di) * scale, dsm = p * (dpm + Dmag) * scale;
          for (i64 d = 0; d < D; ++d) {
            const size_t kj = size_t((b * L + j) * ks + kvh * D + d);
            r.dq[oi + size_t(d)] += ds * K(j, d);
            r.mag_dq[oi + size_t(d)] += dsm * std::abs(K(j, d));
            r.dk[kj] += ds * Q(i, d);
            r.mag_dk[kj] += dsm * std::abs(Q(i, d));
            r.dv[kj] += p * dO(i, d);
            r.mag_dv[kj] += std::abs(p * dO(i, d));
          }
        }
      }
    }
  return r;
}

template <typename T>
std::vector<T> rnd(size_t n, std::mt19937_64& g, double sd = 1.0) {
  std::normal_distribution<double> nd(0, sd);
  std::vector<T> x(n);
  for (auto& e : x) e = T(nd(g));
  return x;
}
template <typename T>
Vec to_d(const std::vector<T>& x) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = double(x[i]);
  return y;
}

// Runs forward + backward with a NaN-filled workspace (every workspace value must be written before it is read).
template <typename T>
struct Outs {
  std::vector<T> out, dq, dk, dv;
  std::vector<acc_t<T>> lse;
};
template <typename T>
Outs<T> run(const Shape& s, const std::vector<T>& q, const std::vector<T>& k, const std::vector<T>& v,
           const std::vector<T>& dout) {
  using A = acc_t<T>;
  Outs<T> r;
  r.out.assign(q.size(), T(7.f)), r.dq = r.out;
  r.dk.assign(k.size(), T(7.f)), r.dv = r.dk;
  r.lse.assign(size_t(s.B * s.NH * s.L), A(7));
  std::vector<A> ws(size_t(attention_workspace_elems<T>(s.L, s.D, s.window)), std::numeric_limits<A>::quiet_NaN());
  attention_forward_ref<T>(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), s.B, s.L, s.NH, s.NKV, s.D,
                           s.window, nullptr, ws.data());
  attention_backward_ref<T>(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), r.out.data(), r.lse.data(), q.data(),
                            k.data(), v.data(), s.B, s.L, s.NH, s.NKV, s.D, s.window, nullptr, ws.data());
  return r;
}

// max |a − b| / max |b|
template <typename T>
double rel(const std::vector<T>& a, const Vec& b) {
  double m = 0, s = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    m = std::max(m, std::abs(double(a[i]) - b[i]));
    s = std::max(s, std::abs(b[i]));
  }
  return m / std::max(s, 1e-300);
}

const Shape kShapes[] = {
    {2, 67, 4, 2, 8, 0},     // GQA, odd length across a 64-row block
    {1, 131, 3, 1, 16, 5},   // short window, three row blocks
    {2, 150, 2, 2, 4, 70},   // window longer than a block
    {1, 9, 2, 1, 3, 200},    // window longer than the sequence = causal
    {1, 1, 1, 1, 5, 0},      // one token
};

template <typename T>
void check_against_naive(double tol) {
  for (const Shape& s : kShapes) {
    std::mt19937_64 g(11 + s.L);
    const i64 Tn = s.B * s.L;
    auto q = rnd<T>(size_t(Tn * s.NH * s.D), g, 1.5), k = rnd<T>(size_t(Tn * s.NKV * s.D), g, 1.5);
    auto v = rnd<T>(size_t(Tn * s.NKV * s.D), g), dout = rnd<T>(q.size(), g);
    const Ref ref = naive(s, to_d(q), to_d(k), to_d(v), to_d(dout), false);
    const Outs<T> r = run<T>(s, q, k, v, dout);
    const auto ctx = ::testing::Message() << "B " << s.B << " L " << s.L << " NH " << s.NH << " NKV " << s.NKV
                                          << " D " << s.D << " window " << s.window;
    EXPECT_LE(rel(r.out, ref.out), tol) << ctx;
    EXPECT_LE(rel(r.lse, ref.lse), tol) << ctx;
    EXPECT_LE(rel(r.dq, ref.dq), tol) << ctx;
    EXPECT_LE(rel(r.dk, ref.dk), tol) << ctx;
    EXPECT_LE(rel(r.dv, ref.dv), tol) << ctx;
  }
}

TEST(Attention, DoubleMatchesNaiveReference) { check_against_naive<double>(1e-12); }
TEST(Attention, FloatMatchesNaiveReference) { check_against_naive<float>(3e-6); }

// Same bits at 1 and 4 threads (the workspace planned for 4), for each storage type.
template <typename T>
void check_thread_determinism() {
  const Shape s{3, 150, 4, 2, 8, 0}, w{3, 150, 4, 2, 8, 40};
  const int saved = omp_get_max_threads();
  for (const Shape& sh : {s, w}) {
    std::mt19937_64 g(5);
    const i64 Tn = sh.B * sh.L;
    auto q = rnd<T>(size_t(Tn * sh.NH * sh.D), g), k = rnd<T>(size_t(Tn * sh.NKV * sh.D), g);
    auto v = rnd<T>(k.size(), g), dout = rnd<T>(q.size(), g);
    omp_set_num_threads(1);
    const Outs<T> a = run<T>(sh, q, k, v, dout);
    omp_set_num_threads(4);
    const Outs<T> b = run<T>(sh, q, k, v, dout);
    omp_set_num_threads(saved);
    EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(T))) << "out, window " << sh.window;
    EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(a.lse[0])));
    EXPECT_EQ(0, std::memcmp(a.dq.data(), b.dq.data(), a.dq.size() * sizeof(T))) << "dq, window " << sh.window;
    EXPECT_EQ(0, std::memcmp(a.dk.data(), b.dk.data(), a.dk.size() * sizeof(T))) << "dk, window " << sh.window;
    EXPECT_EQ(0, std::memcmp(a.dv.data(), b.dv.data(), a.dv.size() * sizeof(T))) << "dv, window " << sh.window;
  }
}
TEST(Attention, SameBitsAtAnyThreadCount) {
  check_thread_determinism<float>();
  check_thread_determinism<double>();
  check_thread_determinism<bf16>();
}

// The workspace is one slot per thread, sized by attention_workspace_elems: a sliding window needs only the keys a
// row block sees, so its workspace does not grow with L² (flash-style: nothing of size L² is kept).
TEST(Attention, WorkspaceSize) {
  const i64 per_thread = attention_workspace_elems<float>(4096, 128, 0) / omp_get_max_threads();
  EXPECT_EQ(per_thread, 2 * 64 * 4096);
  EXPECT_EQ(attention_workspace_elems<float>(4096, 128, 100) / omp_get_max_threads(), 2 * 64 * (64 + 99));
  EXPECT_EQ(attention_workspace_elems<double>(100, 8, 0) / omp_get_max_threads(), 2 * 64 * 100);
  EXPECT_EQ(attention_workspace_elems<bf16>(100, 8, 0) / omp_get_max_threads(), 2 * 64 * 100 + 6 * 100 * 8 + 64 * 8);
}

// |y − ref| ≤ half a bf16 ulp of ref (one rounding) + slack (fp32 accumulation; for out also one P rounding flip).
double half_ulp(double ref) {
  const double a = std::max(std::abs(ref), 1.1754943508222875e-38);  // normal range of bf16 = of fp32
  int e;
  std::frexp(a, &e);            // a = f · 2^e, f ∈ [0.5, 1)
  return std::ldexp(1.0, e - 9);  // ulp = 2^(e−1−7); half of it
}
int count_over(const std::vector<bf16>& y, const Vec& ref, const Vec& mag, const Vec* extra, double rel_slack,
               double* worst) {
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double tol = half_ulp(ref[i]) + rel_slack * mag[i] + (extra ? (*extra)[i] : 0.0);
    const double err = std::abs(double(float(y[i])) - ref[i]);
    *worst = std::max(*worst, err / tol);
    bad += err > tol;
  }
  return bad;
}

// bf16 (B6): out = round(round_bf16(P) · V) with fp32 scores and softmax; backward in fp32 from the bf16 out, each of
// dq, dk, dv rounded once. Checked per element against the double reference of that contract: within half a bf16 ulp
// plus 1e-5 of the element's Σ|terms| (fp32 accumulation), plus for out the effect of one P rounding tie going the
// other way (fp32 vs double probabilities). With P left unrounded the same check of out fails.
TEST(Attention, Bf16FollowsContract) {
  for (const Shape& s : kShapes) {
    std::mt19937_64 g(21 + s.L);
    const i64 Tn = s.B * s.L;
    auto q = rnd<bf16>(size_t(Tn * s.NH * s.D), g, 1.5), k = rnd<bf16>(size_t(Tn * s.NKV * s.D), g, 1.5);
    auto v = rnd<bf16>(size_t(Tn * s.NKV * s.D), g), dout = rnd<bf16>(q.size(), g);
    const Outs<bf16> r = run<bf16>(s, q, k, v, dout);
    const Vec out_bf = to_d(r.out);
    const Ref ref = naive(s, to_d(q), to_d(k), to_d(v), to_d(dout), true, &out_bf);
    const auto ctx = ::testing::Message() << "L " << s.L << " window " << s.window;
    double w_out = 0, w_dq = 0, w_dk = 0, w_dv = 0;
    EXPECT_EQ(0, count_over(r.out, ref.out, ref.mag_out, &ref.flip_out, 1e-5, &w_out)) << ctx << " out";
    EXPECT_EQ(0, count_over(r.dq, ref.dq, ref.mag_dq, nullptr, 1e-5, &w_dq)) << ctx << " dq";
    EXPECT_EQ(0, count_over(r.dk, ref.dk, ref.mag_dk, nullptr, 1e-5, &w_dk)) << ctx << " dk";
    EXPECT_EQ(0, count_over(r.dv, ref.dv, ref.mag_dv, nullptr, 1e-5, &w_dv)) << ctx << " dv";
    EXPECT_LE(rel(r.lse, ref.lse), 1e-6) << ctx;
    std::printf("[ bf16 attention L %lld window %lld ] worst error / tolerance: out %.2f dq %.2f dk %.2f dv %.2f\n",
                (long long)s.L, (long long)s.window, w_out, w_dq, w_dk, w_dv);
    if (s.L > 60) {
      // The rounding of P matters at this tolerance: a reference without it is out of bounds somewhere.
      const Ref unrounded = naive(s, to_d(q), to_d(k), to_d(v), to_d(dout), false, &out_bf);
      double w = 0;
      EXPECT_GT(count_over(r.out, unrounded.out, ref.mag_out, nullptr, 1e-5, &w), 0) << ctx;
    }
  }
}

}  // namespace
}  // namespace moe
