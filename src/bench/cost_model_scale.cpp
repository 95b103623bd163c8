// Owns the cost model's extrapolation: network presets, EP size rule, hierarchical all-to-all time and the per-GPU-count table (docs/COST_MODEL.md §Extrapolation).
#include <algorithm>
#include <cmath>

#include "bench/cost_model.h"
#include "core/error.h"

namespace moe {

NetLinks net_preset(const std::string& name) {
  // Per-GPU one-direction bandwidths: NVLink 4 (H100) 900 GB/s bidirectional = 450 GB/s each way; one NDR
  // 400 Gb/s HCA per GPU = 50 GB/s; one 100 GbE port per GPU = 12.5 GB/s. Latencies are per message.
  if (name == "nvlink-ib") return {name, {450, 3}, {50, 5}};
  if (name == "nvlink-eth") return {name, {450, 3}, {12.5, 20}};
  MT_INPUT_FAIL("unknown network preset '", name, "', allowed: nvlink-ib, nvlink-eth (or custom links)");
}

std::vector<std::string> net_preset_names() { return {"nvlink-ib", "nvlink-eth"}; }

double rows_per_gpu(const ScaleTarget& t) {
  const double bound = t.capacity_factor > 0 ? std::min(t.imbalance, t.capacity_factor) : t.imbalance;
  return double(t.tokens) * double(t.topk) * bound;
}

int ep_for(const ScaleTarget& t, int gpus) {
  i64 cap = std::min<i64>(gpus, t.experts);
  if (t.ep_max > 0) cap = std::min<i64>(cap, t.ep_max);
  for (i64 d = cap; d > 1; --d)
    if (t.experts % d == 0 && gpus % d == 0) return int(d);
  return 1;
}

double hierarchical_a2a_ms(double bytes, int ep, int gpus_per_node, const NetLinks& net) {
  MT_CHECK(gpus_per_node >= 1 && bytes >= 0, "gpus_per_node ", gpus_per_node, " bytes ", bytes);
  if (ep <= 1) return 0;
  const int local = std::min(ep, gpus_per_node);                   // group members on this GPU's node, itself included
  const int group_nodes = (ep + gpus_per_node - 1) / gpus_per_node;  // nodes the EP group spans
  double us = 0;
  if (local > 1)  // stage 1: peers on the node
    us += net.intra.latency_us * (local - 1) + bytes * double(local - 1) / ep / (net.intra.gbps * 1e3);
  if (ep > local)  // stage 2: one aggregated message per other node of the group
    us += net.inter.latency_us * (group_nodes - 1) + bytes * double(ep - local) / ep / (net.inter.gbps * 1e3);
  return us * 1e-3;
}

namespace {

// Every phase of one GPU; the all-to-alls by `a2a_ms(phase, bytes)`; plan's fitted ep−1 term (its counts exchange on
// the bench machine) replaced by `counts_ms`; compute phases divided by `speedup`.
template <typename A2A>
ScaleRow layer_row(const CostFit& fit, const ScaleTarget& t, int ep, double speedup, double counts_ms, A2A a2a_ms) {
  ScaleRow r;
  r.ep = ep;
  const double rows = rows_per_gpu(t);
  const double routed_bytes = rows * double(t.hidden) * t.elem_bytes;  // a GPU's routed rows, its own share included
  const double off_gpu = routed_bytes * double(ep - 1) / ep;           // one exchange, to other GPUs
  PhaseWork w;
  w.ep = ep;
  w.T = double(t.tokens);
  w.H = double(t.hidden);
  w.I = double(t.ffn);
  w.E = double(t.experts);
  w.K = double(t.topk);
  w.rows = rows;
  w.send_bytes = w.recv_bytes = off_gpu;
  for (int p = 0; p < kMoePhases; ++p) {
    const MoePhase phase = MoePhase(p);
    double ms;
    if (is_a2a_phase(phase)) {
      ms = a2a_ms(phase, routed_bytes, w);
      r.a2a_ms += ms;
    } else {
      ms = predict_phase_ms(fit, phase, w);
      if (phase == MoePhase::Permute || phase == MoePhase::Unpermute || phase == MoePhase::UnpermuteBwd ||
          phase == MoePhase::PermuteBwd)
        ms *= t.elem_bytes / fit.elem_bytes;  // fitted per element of the bench's width
      if (phase == MoePhase::Plan) {
        const PhaseFit& pf = fit.phases[size_t(p)];
        if (pf.fitted) ms -= pf.coef_ms[3] * (ep - 1);  // terms: 1, T*K, E, ep-1
      }
      ms /= speedup;
      if (phase == MoePhase::Plan) ms += counts_ms;
      r.compute_ms += ms;
    }
    r.phase_ms[size_t(p)] = ms;
  }
  r.a2a_bytes_gpu = 4 * off_gpu;
  r.layer_ms = r.a2a_ms + r.compute_ms;
  const double experts = r.phase_ms[size_t(MoePhase::Experts)] + r.phase_ms[size_t(MoePhase::ExpertsBwd)];
  r.overhead_pct = r.layer_ms > 0 ? 100 * (r.layer_ms - experts) / r.layer_ms : 0;
  r.tok_s_gpu = r.layer_ms > 0 ? double(t.tokens) / (r.layer_ms * 1e-3) : 0;
  return r;
}

void check_target(const ScaleTarget& t) {
  MT_INPUT_CHECK(t.hidden > 0 && t.ffn > 0 && t.experts > 0 && t.topk > 0 && t.tokens > 0,
                 "model dims must be >= 1: hidden ", t.hidden, ", ffn ", t.ffn, ", experts ", t.experts, ", topk ",
                 t.topk, ", tokens ", t.tokens);
  MT_INPUT_CHECK(t.topk <= t.experts, "topk ", t.topk, " exceeds experts ", t.experts);
  MT_INPUT_CHECK(t.capacity_factor >= 0 && std::isfinite(t.capacity_factor), "capacity factor ", t.capacity_factor,
                 ", allowed: >= 0 (0 = dropless)");
  MT_INPUT_CHECK(t.elem_bytes > 0, "elem_bytes ", t.elem_bytes, ", allowed: > 0");
  MT_INPUT_CHECK(t.gpus_per_node >= 1, "gpus per node ", t.gpus_per_node, ", allowed: >= 1");
  MT_INPUT_CHECK(t.min_gpus >= 1 && t.max_gpus >= t.min_gpus, "GPU range ", t.min_gpus, "..", t.max_gpus,
                 ", allowed: 1 <= min <= max");
  MT_INPUT_CHECK(t.ep_max >= 0, "ep_max ", t.ep_max, ", allowed: >= 0 (0 = experts)");
  MT_INPUT_CHECK(t.imbalance >= 1 && std::isfinite(t.imbalance), "imbalance ", t.imbalance, ", allowed: >= 1");
  MT_INPUT_CHECK(t.compute_speedup > 0 && std::isfinite(t.compute_speedup), "compute speedup ", t.compute_speedup,
                 ", allowed: > 0");
}

void check_net(const NetLinks& n) {
  for (const Link* l : {&n.intra, &n.inter})
    MT_INPUT_CHECK(l->gbps > 0 && std::isfinite(l->gbps) && l->latency_us >= 0 && std::isfinite(l->latency_us),
                   "network ", n.name, ": link bandwidth ", l->gbps, " GB/s, latency ", l->latency_us,
                   " us; allowed: bandwidth > 0, latency >= 0");
}

}  // namespace

ScaleTable extrapolate(const CostFit& fit, const ScaleTarget& t, const NetLinks& net) {
  check_target(t);
  check_net(net);
  ScaleTable table;
  table.net = net;
  for (i64 g = t.min_gpus; g <= t.max_gpus; g *= 2) {
    const int gpus = int(g), ep = ep_for(t, gpus);
    const auto a2a = [&](MoePhase, double bytes, const PhaseWork&) {
      return hierarchical_a2a_ms(bytes, ep, t.gpus_per_node, net);
    };
    // The counts exchange of plan: E·8 bytes per peer, latency-bound.
    const double counts_ms = hierarchical_a2a_ms(double(t.experts) * 8, ep, t.gpus_per_node, net);
    ScaleRow r = layer_row(fit, t, ep, t.compute_speedup, counts_ms, a2a);
    r.gpus = gpus;
    r.nodes = (gpus + t.gpus_per_node - 1) / t.gpus_per_node;
    r.edp = gpus / ep;
    r.remote_share = double(ep - std::min(ep, t.gpus_per_node)) / ep;
    r.tok_s_total = r.tok_s_gpu * gpus;
    table.rows.push_back(r);
  }
  return table;
}

ScaleRow fitted_point(const CostFit& fit, const ScaleTarget& t) {
  check_target(t);
  ScaleTarget one_group = t;
  one_group.ep_max = 0;
  const int ep = ep_for(one_group, fit.ep_max);
  // The bench machine as measured: fitted α-β per all-to-all phase, plan's own ep−1 term, no compute speedup.
  const auto a2a = [&](MoePhase phase, double, const PhaseWork& w) { return predict_phase_ms(fit, phase, w); };
  const PhaseFit& plan = fit.phases[size_t(MoePhase::Plan)];
  const double counts_ms = plan.fitted ? plan.coef_ms[3] * (ep - 1) : 0;
  ScaleRow r = layer_row(fit, t, ep, 1.0, counts_ms, a2a);
  r.gpus = ep;
  r.nodes = 1;
  r.edp = 1;
  r.remote_share = 0;
  r.tok_s_total = r.tok_s_gpu * ep;
  return r;
}

}  // namespace moe
