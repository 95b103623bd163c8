// Owns the cost model's fit and validation: per-phase non-negative least squares (Eigen, relative-error weights) and held-out / leave-one-out prediction error (docs/COST_MODEL.md).
#include "bench/cost_model.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace moe {
namespace {

using TermFn = double (*)(const PhaseWork&);
struct TermSpec {
  const char* name;
  TermFn f;
};

double one(const PhaseWork&) { return 1; }
double peers(const PhaseWork& w) { return w.ep - 1; }
double router_work(const PhaseWork& w) { return w.T * w.H * w.E; }
double slot_count(const PhaseWork& w) { return w.T * w.K; }
double expert_count(const PhaseWork& w) { return w.E; }
double rows_moved(const PhaseWork& w) { return w.T * w.K * w.H; }
double expert_work(const PhaseWork& w) { return w.rows * w.H * w.I; }
double sent(const PhaseWork& w) { return w.send_bytes; }
double received(const PhaseWork& w) { return w.recv_bytes; }

// The terms of each phase's model (the header lists them); index 1 is the work slope that phase_rate reports.
std::vector<TermSpec> phase_terms(MoePhase p) {
  switch (p) {
    case MoePhase::Route:
    case MoePhase::RouteBwd:
      return {{"1", one}, {"T*H*E", router_work}};
    case MoePhase::Plan:
      return {{"1", one}, {"T*K", slot_count}, {"E", expert_count}, {"ep-1", peers}};
    case MoePhase::Permute:
    case MoePhase::Unpermute:
    case MoePhase::UnpermuteBwd:
    case MoePhase::PermuteBwd:
      return {{"1", one}, {"T*K*H", rows_moved}};
    case MoePhase::Experts:
    case MoePhase::ExpertsBwd:
      return {{"1", one}, {"rows*H*I", expert_work}};
    case MoePhase::DispatchA2A:      // rows to the experts' ranks
    case MoePhase::CombineA2ABwd:    // dy rows to the experts' ranks: the dispatch direction
      return {{"ep-1", peers}, {"bytes", sent}};
    case MoePhase::CombineA2A:       // expert outputs back to the tokens' ranks
    case MoePhase::DispatchA2ABwd:   // dx rows back: the combine direction
      return {{"ep-1", peers}, {"bytes", received}};
    case MoePhase::kCount:
      break;
  }
  MT_CHECK(false, "phase ", int(p));
}

// Non-negative weighted least squares: min Σ_i ((A_i·c − b_i)/max(b_i, floor))², c ≥ 0, by dropping the most
// negative term and refitting (a small active-set loop; exact for the 2–4 terms used here). Columns are scaled to
// max |.| = 1 first so that the QR's rank decision compares like with like; a column of zeros or a work term
// constant over the rows is dropped.
void fit_phase(PhaseFit& pf, const std::vector<PhaseWork>& works, const std::vector<double>& t, double floor_ms) {
  const std::vector<TermSpec> terms = phase_terms(pf.phase);
  const size_t m = terms.size(), n = works.size();
  pf.term_names.clear();
  for (const TermSpec& s : terms) pf.term_names.push_back(s.name);
  pf.coef_ms.assign(m, 0.0);
  pf.dropped.assign(m, false);
  pf.rows = int(n);
  pf.fitted = n > 0;
  if (n == 0) return;
  Eigen::MatrixXd A(n, m);
  Eigen::VectorXd b(n);
  for (size_t i = 0; i < n; ++i) {
    const double w = 1.0 / std::max(t[i], floor_ms);
    for (size_t j = 0; j < m; ++j) A(Eigen::Index(i), Eigen::Index(j)) = terms[j].f(works[i]) * w;
    b(Eigen::Index(i)) = t[i] * w;
  }
  // A work term that the sweep did not vary (e.g. E when one E was measured) is the intercept in disguise: it is
  // not identified, and keeping it would let the extrapolation scale a constant with it. It is dropped; term 0
  // (the intercept, or α's ep−1 for an all-to-all) stays.
  std::vector<bool> varied(m, true);
  for (size_t j = 1; j < m; ++j) {
    double lo = terms[j].f(works[0]), hi = lo;
    for (const PhaseWork& w : works) {
      lo = std::min(lo, terms[j].f(w));
      hi = std::max(hi, terms[j].f(w));
    }
    varied[j] = hi - lo > 1e-12 * std::max(std::fabs(hi), std::fabs(lo));
  }
  std::vector<double> scale(m);
  std::vector<size_t> active;
  for (size_t j = 0; j < m; ++j) {
    scale[j] = A.col(Eigen::Index(j)).cwiseAbs().maxCoeff();
    if (scale[j] > 0 && varied[j]) {
      A.col(Eigen::Index(j)) /= scale[j];
      active.push_back(j);
    } else {
      pf.dropped[j] = true;
    }
  }
  while (!active.empty()) {
    Eigen::MatrixXd Aa(n, active.size());
    for (size_t k = 0; k < active.size(); ++k) Aa.col(Eigen::Index(k)) = A.col(Eigen::Index(active[k]));
    const Eigen::VectorXd c = Aa.colPivHouseholderQr().solve(b);
    size_t worst = active.size();
    for (size_t k = 0; k < active.size(); ++k)
      if (c(Eigen::Index(k)) < 0 && (worst == active.size() || c(Eigen::Index(k)) < c(Eigen::Index(worst)))) worst = k;
    if (worst == active.size()) {
      for (size_t k = 0; k < active.size(); ++k) pf.coef_ms[active[k]] = c(Eigen::Index(k)) / scale[active[k]];
      return;
    }
    pf.dropped[active[worst]] = true;
    active.erase(active.begin() + long(worst));
  }
}

bool rows_for_phase(MoePhase p, const CostSample& s) { return !is_a2a_phase(p) || s.ep > 1; }

}  // namespace

PhaseWork work_of(const CostSample& s) {
  PhaseWork w;
  w.ep = s.ep;
  w.T = double(s.tokens);
  w.H = double(s.hidden);
  w.I = double(s.ffn);
  w.E = double(s.experts);
  w.K = double(s.topk);
  w.rows = s.rows_max;
  w.send_bytes = s.a2a_send_bytes_max;
  w.recv_bytes = s.a2a_recv_bytes_max;
  return w;
}

CostFit fit_cost_model(const std::vector<CostSample>& samples, const FitOptions& opt) {
  MT_CHECK(!samples.empty(), "the cost model needs at least one configuration");
  MT_CHECK(opt.elem_bytes > 0 && opt.time_floor_ms > 0, "elem_bytes ", opt.elem_bytes, " floor ", opt.time_floor_ms);
  CostFit fit;
  fit.elem_bytes = opt.elem_bytes;
  fit.rows = int(samples.size());
  for (const CostSample& s : samples) fit.ep_max = std::max(fit.ep_max, s.ep);
  for (int p = 0; p < kMoePhases; ++p) {
    const MoePhase phase = MoePhase(p);
    std::vector<PhaseWork> works;
    std::vector<double> t;
    for (const CostSample& s : samples)
      if (rows_for_phase(phase, s)) {
        works.push_back(work_of(s));
        t.push_back(s.ms[size_t(p)]);
      }
    PhaseFit& pf = fit.phases[size_t(p)];
    pf.phase = phase;
    fit_phase(pf, works, t, opt.time_floor_ms);
  }
  return fit;
}

double predict_phase_ms(const CostFit& fit, MoePhase phase, const PhaseWork& w) {
  const PhaseFit& pf = fit.phases[size_t(phase)];
  if (!pf.fitted || (is_a2a_phase(phase) && w.ep <= 1)) return 0;
  const std::vector<TermSpec> terms = phase_terms(phase);
  double t = 0;
  for (size_t j = 0; j < terms.size(); ++j) t += pf.coef_ms[j] * terms[j].f(w);
  return t;
}

double phase_rate(const CostFit& fit, MoePhase phase, std::string* unit) {
  const PhaseFit& pf = fit.phases[size_t(phase)];
  const double slope = pf.coef_ms.size() > 1 ? pf.coef_ms[1] : 0;  // ms per unit of the work term
  double per_unit = 1;  // flops, bytes or items per unit of the work term
  double giga = 1e9;
  std::string u;
  switch (phase) {
    case MoePhase::Route: per_unit = 2; u = "GFLOP/s"; break;      // logits = x·W_r: 2·T·H·E
    case MoePhase::RouteBwd: per_unit = 4; u = "GFLOP/s"; break;   // dx and dW_r: 2 GEMMs
    case MoePhase::Experts: per_unit = 6; u = "GFLOP/s"; break;    // gate, up, down: 3 GEMMs of 2·rows·H·I
    case MoePhase::ExpertsBwd: per_unit = 12; u = "GFLOP/s"; break;  // dX and dW of each
    case MoePhase::Plan: per_unit = 1; giga = 1e6; u = "M(token,slot)/s"; break;
    case MoePhase::Permute:
    case MoePhase::Unpermute:
    case MoePhase::UnpermuteBwd:
    case MoePhase::PermuteBwd: per_unit = fit.elem_bytes; u = "GB/s"; break;
    default: per_unit = 1; u = "GB/s"; break;  // all-to-all: 1/β
  }
  if (unit) *unit = u;
  if (slope <= 0) return 0;
  return per_unit / (slope * 1e-3) / giga;
}

double a2a_alpha_us(const CostFit& fit, MoePhase phase) {
  if (!is_a2a_phase(phase)) return 0;
  const PhaseFit& pf = fit.phases[size_t(phase)];
  return pf.coef_ms.empty() ? 0 : pf.coef_ms[0] * 1e3;
}

namespace {

SamplePrediction predict_sample(const CostFit& fit, const CostSample& s, int index, bool validated) {
  SamplePrediction sp;
  sp.index = index;
  sp.validated = validated;
  sp.ms = s.ms;
  sp.layer_ms = s.layer_ms;
  sp.overhead_pct = s.overhead_pct;
  const PhaseWork w = work_of(s);
  double experts = 0;
  for (int p = 0; p < kMoePhases; ++p) {
    sp.pred_ms[size_t(p)] = predict_phase_ms(fit, MoePhase(p), w);
    sp.pred_layer_ms += sp.pred_ms[size_t(p)];
  }
  experts = sp.pred_ms[size_t(MoePhase::Experts)] + sp.pred_ms[size_t(MoePhase::ExpertsBwd)];
  sp.pred_overhead_pct = sp.pred_layer_ms > 0 ? 100 * (sp.pred_layer_ms - experts) / sp.pred_layer_ms : 0;
  return sp;
}

}  // namespace

Validation validate_cost_model(const std::vector<CostSample>& samples, const FitOptions& opt, CostFit* fit_out,
                               std::vector<SamplePrediction>* predictions) {
  MT_INPUT_CHECK(!samples.empty(), "the cost model needs at least one measured configuration");
  std::vector<CostSample> fitting;
  for (const CostSample& s : samples)
    if (!s.held_out) fitting.push_back(s);
  MT_INPUT_CHECK(!fitting.empty(), "every configuration of the CSV is held out (held_out = 1): nothing to fit");
  Validation v;
  v.method = fitting.size() < samples.size() ? ValidationMethod::HeldOut : ValidationMethod::LeaveOneOut;
  const CostFit fit = fit_cost_model(fitting, opt);
  std::vector<SamplePrediction> preds;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (v.method == ValidationMethod::HeldOut || samples.size() < 2) {
      preds.push_back(predict_sample(fit, samples[i], int(i), samples[i].held_out));
    } else {  // leave-one-out: fit on every other row
      std::vector<CostSample> others;
      for (size_t j = 0; j < samples.size(); ++j)
        if (j != i) others.push_back(samples[j]);
      preds.push_back(predict_sample(fit_cost_model(others, opt), samples[i], int(i), true));
    }
  }
  // Errors over the validated rows.
  std::array<double, kMoePhases> sum{}, share{};
  double layer_sum = 0, oh_sum = 0;
  for (const SamplePrediction& sp : preds) {
    const CostSample& s = samples[size_t(sp.index)];
    double phases = 0;
    for (double t : s.ms) phases += t;
    v.phase_sum_vs_layer_pct += (phases / s.layer_ms - 1) * 100 / double(samples.size());
    if (!sp.validated) continue;
    ++v.rows;
    const double layer_err = std::fabs(sp.pred_layer_ms - sp.layer_ms) / sp.layer_ms * 100;
    layer_sum += layer_err;
    v.layer_mape_max = std::max(v.layer_mape_max, layer_err);
    const double oh_err = std::fabs(sp.pred_overhead_pct - sp.overhead_pct);
    oh_sum += oh_err;
    v.overhead_err_pp_max = std::max(v.overhead_err_pp_max, oh_err);
    if (s.ep == 1) ++v.ep1_a2a_rows;
    for (int p = 0; p < kMoePhases; ++p) {
      const double meas = sp.ms[size_t(p)];
      if ((is_a2a_phase(MoePhase(p)) && s.ep == 1) || meas < opt.time_floor_ms) continue;
      PhaseError& e = v.phases[size_t(p)];
      const double err = std::fabs(sp.pred_ms[size_t(p)] - meas) / meas * 100;
      ++e.rows;
      sum[size_t(p)] += err;
      share[size_t(p)] += meas / sp.layer_ms * 100;
      e.mape_max = std::max(e.mape_max, err);
    }
  }
  if (v.rows > 0) {
    v.layer_mape_mean = layer_sum / v.rows;
    v.overhead_err_pp_mean = oh_sum / v.rows;
  }
  for (int p = 0; p < kMoePhases; ++p) {
    PhaseError& e = v.phases[size_t(p)];
    if (e.rows == 0) continue;
    e.mape_mean = sum[size_t(p)] / e.rows;
    e.share_mean = share[size_t(p)] / e.rows;
  }
  if (fit_out) *fit_out = fit;
  if (predictions) *predictions = std::move(preds);
  return v;
}

}  // namespace moe
