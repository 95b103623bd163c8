// Owns the cost model's outputs: run_cost_model (fit → validate → extrapolate), the validation report, the scaling table as text and Markdown, and the JSON of all of it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>

#include "bench/cost_model.h"
#include "core/error.h"

namespace moe {

CostReport run_cost_model(const std::vector<CostSample>& samples, const ScaleTarget& target,
                          const std::vector<NetLinks>& nets, const FitOptions& opt) {
  MT_CHECK(!nets.empty(), "no network to extrapolate to");
  CostReport r;
  r.samples = samples;
  r.target = target;
  r.validation = validate_cost_model(samples, opt, &r.fit, &r.predictions);
  for (const NetLinks& n : nets) r.tables.push_back(extrapolate(r.fit, target, n));
  r.fitted = fitted_point(r.fit, target);
  return r;
}

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// 3 significant digits without exponent for the table's usual range.
std::string num(double v) {
  const double a = std::fabs(v);
  if (a >= 1000) return fmt("%.0f", v);
  if (a >= 100) return fmt("%.1f", v);
  if (a >= 10) return fmt("%.2f", v);
  if (a >= 0.001 || a == 0) return fmt("%.3f", v);
  return fmt("%.2e", v);
}

std::string phase_formula(const CostFit& fit, MoePhase p) {
  const PhaseFit& pf = fit.phases[size_t(p)];
  if (!pf.fitted) return "not fitted (no rows)";
  std::string s;
  if (is_a2a_phase(p)) {
    std::string unit;
    const double bw = phase_rate(fit, p, &unit);
    return "alpha " + num(a2a_alpha_us(fit, p)) + " us/peer, 1/beta " + (bw > 0 ? num(bw) + " " + unit : "inf");
  }
  for (size_t j = 0; j < pf.coef_ms.size(); ++j) {
    if (pf.coef_ms[j] == 0) continue;
    if (!s.empty()) s += " + ";
    s += fmt("%.3g", pf.coef_ms[j]);
    const std::string& term = pf.term_names[j];
    if (term != "1") s += term.find('-') == std::string::npos ? "*" + term : "*(" + term + ")";
  }
  return (s.empty() ? "0" : s) + " ms";
}

std::string rate_text(const CostFit& fit, MoePhase p) {
  if (is_a2a_phase(p)) return "";
  std::string unit;
  const double r = phase_rate(fit, p, &unit);
  return r > 0 ? num(r) + " " + unit : "-";
}

std::string pad(const std::string& s, size_t w, bool left = false) {
  if (s.size() >= w) return s;
  return left ? s + std::string(w - s.size(), ' ') : std::string(w - s.size(), ' ') + s;
}

// The table's columns: header, and the cells of one row (first cell = GPUs, or "bench" for the fitted point).
const std::vector<std::string> kHeader = {"GPUs",    "nodes",      "ep",        "edp",       "remote %",
                                          "a2a MB/GPU", "a2a ms", "compute ms", "layer ms", "overhead %",
                                          "tok/s/GPU", "tok/s total"};

std::vector<std::string> cells(const ScaleRow& r, bool bench) {
  return {bench ? "bench" : std::to_string(r.gpus), std::to_string(r.nodes), std::to_string(r.ep),
          std::to_string(r.edp), fmt("%.1f", 100 * r.remote_share), num(r.a2a_bytes_gpu / 1e6), num(r.a2a_ms),
          num(r.compute_ms), num(r.layer_ms), fmt("%.1f", r.overhead_pct), num(r.tok_s_gpu), num(r.tok_s_total)};
}

std::string table_caption(const CostReport& r, size_t i) {
  const ScaleTable& tb = r.tables.at(i);
  const ScaleTarget& t = r.target;
  std::ostringstream os;
  const auto g = [](double v) { return fmt("%g", v); };
  os << "routing overhead, one MoE layer forward+backward per GPU; network " << tb.net.name << ": intra-node "
     << g(tb.net.intra.gbps) << " GB/s " << g(tb.net.intra.latency_us) << " us, inter-node " << g(tb.net.inter.gbps)
     << " GB/s " << g(tb.net.inter.latency_us) << " us, " << t.gpus_per_node << " GPUs/node; model H=" << t.hidden
     << " I=" << t.ffn << " E=" << t.experts << " K=" << t.topk << " T=" << t.tokens << "/GPU cf="
     << g(t.capacity_factor) << ", " << g(t.elem_bytes) << " B/element";
  if (t.imbalance != 1) os << ", imbalance " << g(t.imbalance);
  if (t.compute_speedup != 1) os << ", compute x" << g(t.compute_speedup) << " vs the bench";
  os << "; 'bench' = the measured machine at its ep (fitted alpha-beta, no speedup)";
  return os.str();
}

}  // namespace

void print_validation(std::ostream& os, const CostReport& r) {
  const Validation& v = r.validation;
  int held = 0;
  for (const CostSample& s : r.samples) held += s.held_out;
  os << "cost model: " << r.samples.size() << " configurations from " << (r.source.empty() ? "the bench" : r.source)
     << " (" << r.fit.rows << " fitted, " << held << " held out)\n";
  const std::string what = v.method == ValidationMethod::HeldOut
                               ? "held-out prediction error"
                               : "leave-one-out prediction error (no held-out rows in the CSV)";
  if (v.rows == 0) {
    os << what << ": not enough configurations to validate\n";
  } else {
    os << what << ": layer " << fmt("%.1f", v.layer_mape_mean) << " % (mean), " << fmt("%.1f", v.layer_mape_max)
       << " % (max) over " << v.rows << " configurations; routing-overhead share " << fmt("%.1f", v.overhead_err_pp_mean)
       << " pp (mean), " << fmt("%.1f", v.overhead_err_pp_max) << " pp (max)";
    if (v.ep1_a2a_rows) os << "; " << v.ep1_a2a_rows << " at ep = 1 predict 0 ms all-to-all";
    os << "\n";
  }
  os << "measured phases sum to " << fmt("%.1f", 100 + v.phase_sum_vs_layer_pct) << " % of layer_ms (mean)\n";
  os << "per phase:\n  " << pad("phase", 17, true) << pad("fit", 48, true) << pad("rate", 22, true)
     << pad("err mean", 10) << pad("err max", 10) << pad("share", 8) << "\n";
  for (int p = 0; p < kMoePhases; ++p) {
    const PhaseError& e = v.phases[size_t(p)];
    os << "  " << pad(kMoePhaseName[p], 17, true) << pad(phase_formula(r.fit, MoePhase(p)), 48, true)
       << pad(rate_text(r.fit, MoePhase(p)), 22, true);
    if (e.rows > 0)
      os << pad(fmt("%.1f %%", e.mape_mean), 10) << pad(fmt("%.1f %%", e.mape_max), 10)
         << pad(fmt("%.1f %%", e.share_mean), 8);
    else
      os << pad("-", 10) << pad("-", 10) << pad("-", 8);
    os << "\n";
  }
}

void print_scale_table(std::ostream& os, const CostReport& r, size_t i) {
  std::vector<std::vector<std::string>> rows = {kHeader, cells(r.fitted, true)};
  for (const ScaleRow& row : r.tables.at(i).rows) rows.push_back(cells(row, false));
  std::vector<size_t> w(kHeader.size(), 0);
  for (const auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) w[c] = std::max(w[c], row[c].size());
  os << table_caption(r, i) << "\n";
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) os << (c ? "  " : "") << pad(row[c], w[c]);
    os << "\n";
  }
}

std::string scale_table_markdown(const CostReport& r, size_t i) {
  std::ostringstream os;
  os << table_caption(r, i) << "\n\n|";
  for (const std::string& h : kHeader) os << " " << h << " |";
  os << "\n|";
  for (size_t c = 0; c < kHeader.size(); ++c) os << "---:|";
  os << "\n";
  std::vector<std::vector<std::string>> rows = {cells(r.fitted, true)};
  for (const ScaleRow& row : r.tables.at(i).rows) rows.push_back(cells(row, false));
  for (const auto& row : rows) {
    os << "|";
    for (const std::string& c : row) os << " " << c << " |";
    os << "\n";
  }
  return os.str();
}

namespace {

nlohmann::json phase_map(const std::array<double, kMoePhases>& ms) {
  nlohmann::json j = nlohmann::json::object();
  for (int p = 0; p < kMoePhases; ++p) j[kMoePhaseName[p]] = ms[size_t(p)];
  return j;
}

nlohmann::json row_json(const ScaleRow& r) {
  return {{"gpus", r.gpus},
          {"nodes", r.nodes},
          {"ep", r.ep},
          {"edp", r.edp},
          {"remote_share", r.remote_share},
          {"a2a_bytes_gpu", r.a2a_bytes_gpu},
          {"a2a_ms", r.a2a_ms},
          {"compute_ms", r.compute_ms},
          {"layer_ms", r.layer_ms},
          {"overhead_pct", r.overhead_pct},
          {"tok_s_gpu", r.tok_s_gpu},
          {"tok_s_total", r.tok_s_total},
          {"phase_ms", phase_map(r.phase_ms)}};
}

nlohmann::json link_json(const Link& l) { return {{"gbps", l.gbps}, {"latency_us", l.latency_us}}; }

}  // namespace

nlohmann::json cost_report_json(const CostReport& r) {
  nlohmann::json phases = nlohmann::json::array();
  for (int p = 0; p < kMoePhases; ++p) {
    const PhaseFit& pf = r.fit.phases[size_t(p)];
    const PhaseError& e = r.validation.phases[size_t(p)];
    nlohmann::json terms = nlohmann::json::array();
    for (size_t j = 0; j < pf.coef_ms.size(); ++j)
      terms.push_back({{"term", pf.term_names[j]}, {"coef_ms", pf.coef_ms[j]}, {"dropped", bool(pf.dropped[j])}});
    std::string unit;
    const double rate = phase_rate(r.fit, MoePhase(p), &unit);
    nlohmann::json j = {{"phase", kMoePhaseName[p]},
                        {"kind", is_a2a_phase(MoePhase(p)) ? "a2a" : "compute"},
                        {"fitted", pf.fitted},
                        {"rows", pf.rows},
                        {"terms", terms},
                        {"rate", rate > 0 ? nlohmann::json(rate) : nlohmann::json(nullptr)},
                        {"rate_unit", unit},
                        {"error", {{"rows", e.rows}, {"mape_mean", e.mape_mean}, {"mape_max", e.mape_max},
                                   {"share_mean", e.share_mean}}}};
    if (is_a2a_phase(MoePhase(p))) j["alpha_us"] = a2a_alpha_us(r.fit, MoePhase(p));
    phases.push_back(j);
  }
  const Validation& v = r.validation;
  nlohmann::json samples = nlohmann::json::array();
  for (const SamplePrediction& sp : r.predictions) {
    const CostSample& s = r.samples[size_t(sp.index)];
    samples.push_back({{"index", sp.index},
                       {"line", s.line},
                       {"ep", s.ep},
                       {"tokens", s.tokens},
                       {"hidden", s.hidden},
                       {"ffn", s.ffn},
                       {"experts", s.experts},
                       {"topk", s.topk},
                       {"capacity_factor", s.capacity_factor},
                       {"held_out", s.held_out},
                       {"validated", sp.validated},
                       {"measured_ms", phase_map(sp.ms)},
                       {"predicted_ms", phase_map(sp.pred_ms)},
                       {"layer_ms", sp.layer_ms},
                       {"pred_layer_ms", sp.pred_layer_ms},
                       {"overhead_pct", sp.overhead_pct},
                       {"pred_overhead_pct", sp.pred_overhead_pct}});
  }
  nlohmann::json tables = nlohmann::json::array();
  for (const ScaleTable& tb : r.tables) {
    nlohmann::json rows = nlohmann::json::array();
    for (const ScaleRow& row : tb.rows) rows.push_back(row_json(row));
    tables.push_back({{"net", tb.net.name}, {"intra", link_json(tb.net.intra)}, {"inter", link_json(tb.net.inter)},
                      {"rows", rows}});
  }
  const ScaleTarget& t = r.target;
  return {{"source", r.source},
          {"fit", {{"elem_bytes", r.fit.elem_bytes}, {"rows", r.fit.rows}, {"ep_max", r.fit.ep_max},
                   {"phases", phases}}},
          {"validation", {{"method", v.method == ValidationMethod::HeldOut ? "held_out" : "leave_one_out"},
                          {"rows", v.rows},
                          {"layer_mape_mean", v.layer_mape_mean},
                          {"layer_mape_max", v.layer_mape_max},
                          {"overhead_err_pp_mean", v.overhead_err_pp_mean},
                          {"overhead_err_pp_max", v.overhead_err_pp_max},
                          {"phase_sum_vs_layer_pct", v.phase_sum_vs_layer_pct},
                          {"ep1_a2a_rows", v.ep1_a2a_rows}}},
          {"samples", samples},
          {"target", {{"hidden", t.hidden}, {"ffn", t.ffn}, {"experts", t.experts}, {"topk", t.topk},
                      {"tokens", t.tokens}, {"capacity_factor", t.capacity_factor}, {"elem_bytes", t.elem_bytes},
                      {"gpus_per_node", t.gpus_per_node}, {"min_gpus", t.min_gpus}, {"max_gpus", t.max_gpus},
                      {"ep_max", t.ep_max}, {"imbalance", t.imbalance}, {"compute_speedup", t.compute_speedup}}},
          {"fitted_point", row_json(r.fitted)},
          {"extrapolation", tables}};
}

}  // namespace moe
