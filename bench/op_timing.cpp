// Owns the per-op CPU timing harness: times Model<float> forward/backward and each kernel of one step on the bench shapes.
//
// Build and run: bench/op_timing.sh [--build DIR] [--threads N] [-- B L H I layers heads kv_heads E K V reps]
// (compiles this file with DIR's flags and links it like DIR's moe-train; DIR needs libmoe_core.a).
// Prints ms per call, calls per training step and ms per step for every op, and the whole step.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "config/config.h"
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
#include "optim/adamw.h"

using namespace moe;
using clk = std::chrono::steady_clock;

static int g_reps = 10;

// Median wall time of fn() in ms over g_reps runs after one warm-up.
static double time_ms(const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int r = 0; r < g_reps; ++r) {
    const auto t0 = clk::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Row {
  std::string name;
  double ms;
  double calls;
  double gflop;  // per call, 0 if not a GEMM-like op
};

static std::vector<float> rnd(i64 n, float scale, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = scale * d(g);
  return v;
}


// ---------------- the previous loop-based attention_ref (before the GEMM version), as baseline and oracle ----------------
template <typename T>
static void attn_fwd_loops(T* out, T* probs, const T* q, const T* k, const T* v, i64 B, i64 L, i64 NH, i64 NKV, i64 D) {
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
static void attn_bwd_loops(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* probs, i64 B,
                           i64 L, i64 NH, i64 NKV, i64 D) {
  const i64 rep = NH / NKV, qs = NH * D, ks = NKV * D;
  const T scale = T(1.0 / std::sqrt(double(D)));
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

// The previous SwiGLU (scalar std::exp), as the "before" rows.
static void swiglu_fwd_scalar(float* h, const float* a, const float* b, i64 N) {
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const float s = 1.f / (1.f + std::exp(-a[n]));
    h[n] = a[n] * s * b[n];
  }
}
static void swiglu_bwd_scalar(float* da, float* db, const float* dh, const float* a, const float* b, i64 N) {
#pragma omp parallel for schedule(static)
  for (i64 n = 0; n < N; ++n) {
    const float s = 1.f / (1.f + std::exp(-a[n]));
    const float silu = a[n] * s;
    db[n] = dh[n] * silu;
    da[n] = dh[n] * b[n] * (s + a[n] * s * (1.f - s));
  }
}

// attention_ref vs the loops on one shape: max |diff| / max |ref| of out, dq, dk, dv (T = float or double).
template <typename T>
static double attn_check(i64 B, i64 L, i64 NH, i64 NKV, i64 D) {
  std::mt19937 g(3);
  std::normal_distribution<double> nd(0, 1);
  auto mk = [&](i64 n) {
    std::vector<T> x(static_cast<size_t>(n));
    for (auto& e : x) e = T(nd(g));
    return x;
  };
  const i64 T_ = B * L;
  auto q = mk(T_ * NH * D), k = mk(T_ * NKV * D), v = mk(T_ * NKV * D), dO = mk(T_ * NH * D);
  std::vector<T> o1(q.size()), o2(q.size()), p1(static_cast<size_t>(B * NH * L * L), T(7)), lse(size_t(B * NH * L));
  std::vector<T> ws(static_cast<size_t>(attention_workspace_elems<T>(L, D, 0)));
  std::vector<T> dq1(q.size(), T(7)), dq2(dq1), dk1(k.size(), T(7)), dk2(dk1), dv1(v.size(), T(7)), dv2(dv1);
  attn_fwd_loops<T>(o1.data(), p1.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D);
  attention_forward_ref<T>(o2.data(), lse.data(), q.data(), k.data(), v.data(), B, L, NH, NKV, D, 0, ws.data());
  attn_bwd_loops<T>(dq1.data(), dk1.data(), dv1.data(), dO.data(), q.data(), k.data(), v.data(), p1.data(), B, L, NH, NKV, D);
  attention_backward_ref<T>(dq2.data(), dk2.data(), dv2.data(), dO.data(), o2.data(), lse.data(), q.data(), k.data(),
                            v.data(), B, L, NH, NKV, D, 0, ws.data());
  auto rel = [](const std::vector<T>& a, const std::vector<T>& b) {
    double m = 0, s = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i]))), s = std::max(s, double(std::fabs(a[i])));
    return m / (s > 0 ? s : 1);
  };
  const double r = std::max({rel(o1, o2), rel(dq1, dq2), rel(dk1, dk2), rel(dv1, dv2)});
  std::printf("attention_ref vs loops (%s, B %lld L %lld NH %lld NKV %lld D %lld): max rel diff %.2e"
              " (out %.1e dq %.1e dk %.1e dv %.1e)\n",
              sizeof(T) == 4 ? "float" : "double", (long long)B, (long long)L, (long long)NH, (long long)NKV,
              (long long)D, r, rel(o1, o2), rel(dq1, dq2), rel(dk1, dk2), rel(dv1, dv2));
  return r;
}

int main(int argc, char** argv) {
  i64 a[11] = {4, 256, 256, 512, 4, 4, 4, 8, 2, 256, 10};
  for (int i = 1; i < argc && i <= 11; ++i) a[i - 1] = std::atol(argv[i]);
  const i64 B = a[0], L = a[1], H = a[2], I = a[3], NL = a[4], NH = a[5], NKV = a[6], E = a[7], K = a[8], V = a[9];
  g_reps = int(a[10]);
  const i64 Tn = B * L, D = H / NH, TK = Tn * K;
  std::printf("shapes: B %lld L %lld H %lld I %lld layers %lld heads %lld kv %lld E %lld K %lld V %lld (T = %lld)\n",
              (long long)B, (long long)L, (long long)H, (long long)I, (long long)NL, (long long)NH, (long long)NKV,
              (long long)E, (long long)K, (long long)V, (long long)Tn);

  std::vector<Row> rows;
  auto add = [&](const std::string& n, double calls, double gflop, const std::function<void()>& fn) {
    rows.push_back({n, time_ms(fn), calls, gflop});
  };

  // ---------------- whole model step (forward + backward + clip + AdamW), like Trainer::step ----------------
  ModelConfig mc;
  mc.arch = Arch::Mixtral;
  mc.vocab_size = int(V);
  mc.hidden_size = int(H);
  mc.intermediate_size = int(I);
  mc.num_layers = int(NL);
  mc.num_heads = int(NH);
  mc.num_kv_heads = int(NKV);
  mc.num_experts = int(E);
  mc.top_k = int(K);
  MoeConfig moec;
  moec.capacity_factor = 0;
  moec.aux_loss_coef = 0.01;
  moec.aux_loss_form = AuxForm::Hf;
  moec.z_loss_coef = 0;
  Model<float> model(mc, moec, B, L);
  const i64 NP = model.table().total_numel();
  std::vector<float> P = rnd(NP, 0.02f, 1), G(static_cast<size_t>(NP), 0.f), M1(static_cast<size_t>(NP), 0.f), M2(static_cast<size_t>(NP), 0.f);
  for (const auto& e : model.table().entries())
    if (e.is_norm) std::fill(P.begin() + e.offset, P.begin() + e.offset + e.numel, 1.f);
  std::vector<int32_t> inp(static_cast<size_t>(Tn)), tgt(static_cast<size_t>(Tn));
  {
    std::mt19937 g(7);
    for (i64 i = 0; i < Tn; ++i) inp[i] = int32_t(g() % V), tgt[i] = int32_t(g() % V);
  }
  const std::vector<std::vector<float>> bias;
  LossScales sc{1.0 / double(Tn), 0.01, 0.0};
  add("model.forward", 1, 0, [&] { model.forward(P.data(), inp.data(), tgt.data(), bias, RngCtx{}, Mode::Train); });
  add("model.forward+backward", 1, 0, [&] {
    model.forward(P.data(), inp.data(), tgt.data(), bias, RngCtx{}, Mode::Train);
    model.backward(P.data(), G.data(), inp.data(), tgt.data(), sc, AuxForm::Hf, nullptr);
  });
  add("zero grads (std::fill)", 1, 0, [&] { std::fill(G.begin(), G.end(), 0.f); });
  add("grad_sq_sum", 1, 0, [&] { (void)grad_sq_sum(G.data(), NP); });
  add("clip scale (parallel loop, as ParamState::scale_grads)", 1, 0, [&] {
    float* g = G.data();
#pragma omp parallel for simd schedule(static)
    for (i64 i = 0; i < NP; ++i) g[i] *= 0.999f;
  });
  long step = 1;
  // As ParamState::adamw: every tensor's range in one adamw_update_pieces pass.
  std::vector<AdamWPiece> pieces;
  for (const auto& e : model.table().entries())
    pieces.push_back({P.data() + e.offset, G.data() + e.offset, M1.data() + e.offset, M2.data() + e.offset, e.numel,
                      e.decay});
  add("adamw_update_pieces (all params, one pass)", 1, 0, [&] {
    adamw_update_pieces(pieces, AdamWHyper{1e-3, 0.9, 0.95, 1e-8, 0.01}, step++);
  });
  const size_t n_whole = rows.size();
  add("[before] clip scale (serial loop)", 1, 0, [&] {
    for (float& g : G) g *= 0.999f;
  });
  add("adamw_update per tensor (the old call pattern)", 1, 0, [&] {
    for (const auto& e : model.table().entries())
      adamw_update(P.data() + e.offset, G.data() + e.offset, M1.data() + e.offset, M2.data() + e.offset, e.numel,
                   AdamWHyper{1e-3, 0.9, 0.95, 1e-8, e.decay ? 0.01 : 0.0}, step);
    ++step;
  });

  // ---------------- per-op, one layer's shapes; "calls" = calls per training step ----------------
  auto x = rnd(Tn * H, 1.f, 2), y = rnd(Tn * H, 1.f, 3), w = rnd(H, 1.f, 4), r = rnd(Tn, 1.f, 5);
  auto Wq = rnd(NH * D * H, 0.02f, 6), Wk = rnd(NKV * D * H, 0.02f, 7), Wo = rnd(H * NH * D, 0.02f, 8);
  auto q = rnd(Tn * NH * D, 1.f, 9), kk = rnd(Tn * NKV * D, 1.f, 10), v = rnd(Tn * NKV * D, 1.f, 11);
  std::vector<float> dq(q.size()), dk(kk.size()), dv(v.size()), att(q.size()), dW(static_cast<size_t>(H * H * 4));
  std::vector<float> lse(static_cast<size_t>(B * NH * L)), cs(static_cast<size_t>(L * D / 2)), sn(static_cast<size_t>(L * D / 2));
  rope_table_ref<float>(cs.data(), sn.data(), L, D, 1e6);
  std::vector<float> dxs(static_cast<size_t>(Tn * H));
  const double lin_gf = 2.0 * Tn * H * H * 1e-9;
  add("rmsnorm fwd", 2 * NL + 1, 0, [&] { rmsnorm_forward_ref<float>(y.data(), r.data(), x.data(), w.data(), Tn, H, 1e-5); });
  add("rmsnorm bwd", 2 * NL + 1, 0, [&] {
    std::vector<float> dw(static_cast<size_t>(H));
    rmsnorm_backward_ref<float>(dxs.data(), dw.data(), y.data(), x.data(), w.data(), r.data(), Tn, H);
  });
  add("linear fwd q|o (T x H x H)", 2 * NL, lin_gf, [&] { linear_forward_ref<float>(q.data(), x.data(), Wq.data(), Tn, H, NH * D); });
  add("linear fwd k|v (T x H x KV)", 2 * NL, lin_gf * NKV / NH, [&] { linear_forward_ref<float>(kk.data(), x.data(), Wk.data(), Tn, H, NKV * D); });
  add("linear bwd q|o (dx+dW)", 2 * NL, 2 * lin_gf, [&] {
    linear_backward_ref<float>(dxs.data(), dW.data(), q.data(), x.data(), Wq.data(), Tn, H, NH * D);
  });
  add("linear bwd k|v (dx+dW)", 2 * NL, 2 * lin_gf * NKV / NH, [&] {
    linear_backward_ref<float>(dxs.data(), dW.data(), kk.data(), x.data(), Wk.data(), Tn, H, NKV * D, 1.f);
  });
  {
    // bf16 GEMMs (oneDNN gemm_bf16bf16f32, fp32 accumulation) on the same shapes as the fp32 rows above.
    std::vector<bf16> xb(x.begin(), x.end()), Wqb(Wq.begin(), Wq.end()), qb(q.size()), dxb(x.size());
    std::vector<float> wsb(static_cast<size_t>(Tn * std::max(H, NH * D))), dWf(static_cast<size_t>(NH * D * H));
    add("[bf16] linear fwd q|o (T x H x H)", 2 * NL, lin_gf, [&] {
      linear_forward_bf16(qb.data(), xb.data(), Wqb.data(), Tn, H, NH * D, Accumulate::Overwrite, wsb.data());
    });
    add("[bf16] linear bwd q|o (dx+dW)", 2 * NL, 2 * lin_gf, [&] {
      linear_backward_bf16(dxb.data(), dWf.data(), qb.data(), xb.data(), Wqb.data(), Tn, H, NH * D,
                           Accumulate::Overwrite, wsb.data());
    });
  }
  add("rope fwd (q and k)", 2 * NL, 0, [&] {
    rope_apply_ref<float>(q.data(), cs.data(), sn.data(), B, L, NH, D, RopeDirection::Forward);
  });
  add("rope bwd (q and k)", 2 * NL, 0, [&] {
    rope_apply_ref<float>(dq.data(), cs.data(), sn.data(), B, L, NH, D, RopeDirection::Inverse);
  });
  const double att_gf = 2.0 * B * NH * (L * (L + 1) / 2.0) * D * 2 * 1e-9;  // QKᵀ + PV, causal half
  std::vector<float> aws(static_cast<size_t>(attention_workspace_elems<float>(L, D, 0)));
  add("attention fwd", NL, att_gf, [&] {
    attention_forward_ref<float>(att.data(), lse.data(), q.data(), kk.data(), v.data(), B, L, NH, NKV, D, 0, aws.data());
  });
  add("attention bwd", NL, 2 * att_gf, [&] {
    attention_backward_ref<float>(dq.data(), dk.data(), dv.data(), att.data(), att.data(), lse.data(), q.data(),
                                  kk.data(), v.data(), B, L, NH, NKV, D, 0, aws.data());
  });
  {
    // The previous loop-based attention on the same inputs (the "before" rows); attention_ref is checked against it.
    attn_check<double>(2, 150, 6, 2, 16);
    attn_check<double>(1, 64, 2, 2, 8);
    attn_check<float>(2, 200, 4, 1, 32);
    attn_check<float>(B, L, NH, NKV, D);
    std::vector<float> att2(att.size()), probs2(static_cast<size_t>(B * NH * L * L)), dq2(dq.size()), dk2(dk.size()), dv2(dv.size());
    add("[before] attention fwd (loops)", NL, att_gf, [&] {
      attn_fwd_loops<float>(att2.data(), probs2.data(), q.data(), kk.data(), v.data(), B, L, NH, NKV, D);
    });
    add("[before] attention bwd (loops)", NL, 2 * att_gf, [&] {
      attn_bwd_loops<float>(dq2.data(), dk2.data(), dv2.data(), att.data(), q.data(), kk.data(), v.data(),
                            probs2.data(), B, L, NH, NKV, D);
    });
  }
  add("residual add (serial loop)", 4 * NL, 0, [&] {
    for (i64 i = 0; i < Tn * H; ++i) y[i] += x[i];
  });

  // MoE: router, plan, dispatch, experts, combine, whole layer, with the random init routing (near-balanced).
  auto Wg = rnd(E * H, 0.02f, 12);
  std::vector<float> W1s = rnd(E * I * H, 0.02f, 13), W3s = rnd(E * I * H, 0.02f, 14), W2s = rnd(E * H * I, 0.02f, 15);
  std::vector<float> gW1(W1s.size()), gW3(W3s.size()), gW2(W2s.size()), gWg(Wg.size());
  ExpertWeights<float> ew;
  ExpertGrads<float> eg;
  for (i64 e = 0; e < E; ++e) {
    ew.w1.push_back(W1s.data() + e * I * H);
    ew.w3.push_back(W3s.data() + e * I * H);
    ew.w2.push_back(W2s.data() + e * H * I);
    eg.w1.push_back(gW1.data() + e * I * H);
    eg.w3.push_back(gW3.data() + e * I * H);
    eg.w2.push_back(gW2.data() + e * H * I);
  }
  const ExpertShardSpec shard{};
  Arena arena;
  const auto moe_ops = make_cpu_moe_ops<float>();
  MoeScratch<float> ms{};
  MoeLayer<float> layer(*moe_ops, Tn, H, E, K, I, moec, TopkNorm::Renormalize, shard, ms, arena);
  MoeScratch<float>::reserve(ms, arena, Tn, H, E, K, I, moec, shard);
  arena.allocate();
  std::vector<double> aux_dp(static_cast<size_t>(E), 1e-5);
  std::vector<float> mo(static_cast<size_t>(Tn * H)), dmo = rnd(Tn * H, 1e-3f, 16), dx(static_cast<size_t>(Tn * H));
  add("moe layer fwd (whole MoeLayer::forward)", NL, 0, [&] {
    layer.forward(mo.data(), x.data(), Wg.data(), ew, nullptr, RngCtx{}, Mode::Train);
  });
  add("moe layer bwd (whole MoeLayer::backward)", NL, 0, [&] {
    layer.backward(dx.data(), dmo.data(), Wg.data(), ew, gWg.data(), eg, aux_dp.data(), 0.0);
  });
  // The pieces of the MoE layer (single process: the EP exchange is a copy and is not timed here).
  std::vector<float> lg(static_cast<size_t>(Tn * E)), pr(static_cast<size_t>(Tn * E)), tw(static_cast<size_t>(TK));
  std::vector<float> dlg(static_cast<size_t>(Tn * E)), dtw(static_cast<size_t>(TK));
  RoutingPlan plan(Tn, E, K);
  const RouterDims rd{Tn, H, E, K};
  add("  router fwd", NL, 0, [&] {
    router_forward<float>(lg.data(), pr.data(), plan.topk_idx.data(), tw.data(), x.data(), Wg.data(), nullptr, rd, 1.0,
                          TopkNorm::Renormalize);
  });
  add("  build_plan", NL, 0, [&] { build_plan<float>(plan, pr.data(), 0.0, DropPolicy::Probs); });
  std::printf("expert rows per expert:");
  for (i64 e = 0; e < E; ++e) std::printf(" %lld", (long long)plan.counts[e]);
  std::printf("\n");
  std::vector<float> xg(static_cast<size_t>(TK * H)), ea(static_cast<size_t>(TK * I)), eb(static_cast<size_t>(TK * I));
  std::vector<float> eh(static_cast<size_t>(TK * I)), ey(static_cast<size_t>(TK * H));
  std::vector<float> sdy(static_cast<size_t>(TK * H)), sdh(static_cast<size_t>(TK * I)), sda(static_cast<size_t>(TK * I));
  std::vector<float> sdb(static_cast<size_t>(TK * I)), sdxg(static_cast<size_t>(TK * H));
  ExpertMlpActs<float> acts{ea.data(), eb.data(), eh.data()};
  const std::vector<i64> counts(plan.counts.begin(), plan.counts.end());
  const double ex_gf = 2.0 * TK * H * I * 3 * 1e-9;
  add("  dispatch_gather", NL, 0, [&] { dispatch_gather<float>(xg.data(), x.data(), plan, H); });
  add("  expert_mlp_forward (3 GEMM/expert + swiglu)", NL, ex_gf, [&] {
    expert_mlp_forward<float>(ey.data(), acts, xg.data(), nullptr, counts, ew, H, I);
  });
  add("  combine_forward", NL, 0, [&] { combine_forward<float>(mo.data(), ey.data(), tw.data(), plan, H); });
  add("  combine_backward", NL, 0, [&] {
    combine_backward<float>(sdy.data(), dtw.data(), dmo.data(), ey.data(), tw.data(), plan, H);
  });
  add("  expert_mlp_backward (6 GEMM/expert + swiglu)", NL, 2 * ex_gf, [&] {
    expert_mlp_backward<float>(sdxg.data(), eg, sdh.data(), sda.data(), sdb.data(), sdy.data(), acts, xg.data(),
                               nullptr, counts, ew, H, I);
  });
  add("  dispatch_scatter_add", NL, 0, [&] { dispatch_scatter_add<float>(dx.data(), sdxg.data(), plan, H); });
  add("  router bwd", NL, 0, [&] {
    router_backward<float>(dx.data(), gWg.data(), dlg.data(), dtw.data(), lg.data(), pr.data(), plan.topk_idx.data(),
                           tw.data(), x.data(), Wg.data(), aux_dp.data(), 0.0, rd, 1.0, TopkNorm::Renormalize);
  });
  {
    const i64 n = plan.counts[0];
    add("    one expert's w1 GEMM (its rows x H -> I)", NL * 2 * E, 2.0 * n * H * I * 1e-9, [&] {
      linear_forward_ref<float>(ea.data(), xg.data(), ew.w1[0], n, H, I);
    });
    add("    swiglu fwd (T*K*I)", NL, 0, [&] { swiglu_forward_ref<float>(eh.data(), ea.data(), eb.data(), TK * I); });
    add("    swiglu bwd (T*K*I)", NL, 0, [&] {
      swiglu_backward_ref<float>(sda.data(), sdb.data(), sdh.data(), ea.data(), eb.data(), TK * I);
    });
    add("    [before] swiglu fwd (scalar std::exp)", NL, 0, [&] { swiglu_fwd_scalar(eh.data(), ea.data(), eb.data(), TK * I); });
    add("    [before] swiglu bwd (scalar std::exp)", NL, 0, [&] {
      swiglu_bwd_scalar(sda.data(), sdb.data(), sdh.data(), ea.data(), eb.data(), TK * I);
    });
  }

  // Head and loss.
  auto Wlm = rnd(V * H, 0.02f, 18);
  std::vector<float> logits(static_cast<size_t>(Tn * V)), dWlm(Wlm.size());
  add("lm_head fwd", 1, 2.0 * Tn * H * V * 1e-9, [&] { linear_forward_ref<float>(logits.data(), x.data(), Wlm.data(), Tn, H, V); });
  add("cross_entropy fwd", 1, 0, [&] { (void)cross_entropy_forward_ref<float>(nullptr, logits.data(), tgt.data(), Tn, V); });
  add("cross_entropy bwd", 1, 0, [&] {
    linear_forward_ref<float>(logits.data(), x.data(), Wlm.data(), Tn, H, V);
    cross_entropy_backward_inplace_ref<float>(logits.data(), tgt.data(), Tn, V, 1.0 / Tn);
  });
  add("lm_head bwd", 1, 2 * 2.0 * Tn * H * V * 1e-9, [&] {
    linear_backward_ref<float>(dxs.data(), dWlm.data(), logits.data(), x.data(), Wlm.data(), Tn, H, V);
  });

  // ---------------- report ----------------
  std::printf("\n%-55s %10s %7s %10s %8s %9s\n", "op", "ms/call", "calls", "ms/step", "%step", "GFLOP/s");
  const double fb = rows[1].ms;
  double step_ms = fb;
  for (size_t i = 2; i < n_whole; ++i) step_ms += rows[i].ms;
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& x_ = rows[i];
    const double per_step = x_.ms * x_.calls;
    char gf[32] = "";
    if (x_.gflop > 0) std::snprintf(gf, sizeof gf, "%9.1f", x_.gflop / (x_.ms * 1e-3));
    std::printf("%-55s %10.3f %7.0f %10.2f %7.1f%% %9s\n", x_.name.c_str(), x_.ms, x_.calls, per_step,
                100.0 * per_step / step_ms, gf);
    if (i + 1 == n_whole) std::printf("%s\n", std::string(104, '-').c_str());
  }
  std::printf("\nstep (fwd+bwd + zero + grad norm + clip + AdamW): %.2f ms -> %.0f tok/s\n", step_ms, double(Tn) / (step_ms * 1e-3));
  std::printf("(ms/step of the per-op rows is ms/call x calls per step; the indented rows are parts of the moe layer rows;\n"
              " [before] rows are earlier library code kept in this file; %%step is relative to the step above)\n");
  return 0;
}
