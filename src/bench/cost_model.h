// Owns the routing-overhead cost model (issue 13 item 5, docs/COST_MODEL.md): moe-bench's CSV → per-phase fits (compute rates, all-to-all α-β) → held-out validation → extrapolation to 8…1024 GPUs.
#pragma once
#include <array>
#include <iosfwd>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/dims.h"
#include "moe/moe_phase.h"

namespace moe {

// ---- input: one row of moe_bench.csv (bench/README_moe_bench.md) ----

// One measured configuration. Times are milliseconds: per phase the median (and 10th/90th percentile) over repeats
// of the per-repeat maximum over ranks. Bytes are per rank and per exchange (one forward dispatch all-to-all; the
// combine moves the same rows back), counting only rows sent to / received from OTHER ranks.
struct CostSample {
  int ep = 1;                  // expert-parallel group size (ranks)
  i64 tokens = 0;              // T: tokens per rank per micro-batch
  i64 hidden = 0, ffn = 0;     // H, I
  i64 experts = 0, topk = 0;   // E (all ranks together), K
  double capacity_factor = 0;  // cf; 0 = dropless
  int repeats = 0;
  std::array<double, kMoePhases> ms{}, p10_ms{}, p90_ms{};
  double fwd_ms = 0, bwd_ms = 0, layer_ms = 0, overhead_pct = 0;
  double a2a_send_bytes_max = 0, a2a_recv_bytes_max = 0;  // bytes, max over ranks
  double rows_max = 0;                                     // rows the busiest rank's experts computed
  bool held_out = false;                                   // set aside by the bench for validation
  int line = 0;                                            // 1-based line in the CSV (messages, plots)
};

// Reads moe-bench's CSV (header line, then one row per configuration; blank lines skipped). Columns are found by
// name, extra columns are ignored. BadInput (exit 2) naming path:line on a missing file, a missing column, a row
// with the wrong number of fields, a field that is not a finite number, or a value out of range; also when the
// file has no data rows.
std::vector<CostSample> read_bench_csv(const std::string& path);

// ---- fit ----

// The work variables of a phase's linear model for one configuration (a CostSample, or an extrapolated GPU).
struct PhaseWork {
  double ep = 1, T = 0, H = 0, I = 0, E = 0, K = 0;
  double rows = 0;        // rows the busiest rank's experts computed
  double send_bytes = 0;  // per exchange, to other ranks (dispatch direction)
  double recv_bytes = 0;  // per exchange, from other ranks (combine direction)
};
PhaseWork work_of(const CostSample& s);

// The model of one phase: t_ms = Σ coef_ms[j] · term_j(work). Terms per phase (docs/COST_MODEL.md):
//   route            1, T·H·E                 route_bwd         1, T·H·E
//   plan             1, T·K, E, ep−1          experts(_bwd)     1, rows·H·I
//   permute, unpermute and their backward: 1, T·K·H
//   the four all-to-alls: ep−1, bytes (send bytes for dispatch and combine_bwd, received bytes for combine and
//   dispatch_bwd); fitted on ep > 1 rows only and 0 at ep = 1.
// Coefficients are ≥ 0: a term whose least-squares coefficient comes out negative is dropped (fixed at 0) and the
// rest refitted, the most negative first, until none is negative. A work term that is constant over the rows (the
// sweep did not vary it) is dropped too: the intercept carries it.
struct PhaseFit {
  MoePhase phase = MoePhase::Route;
  std::vector<std::string> term_names;  // "1", "T*H*E", "ep-1", "bytes", ...
  std::vector<double> coef_ms;          // ms per unit of each term
  std::vector<bool> dropped;            // term fixed at 0 (negative, or not varied by the sweep)
  int rows = 0;                         // configurations the fit used
  bool fitted = false;                  // false: no rows (e.g. an all-to-all without ep > 1 rows); predicts 0
};

struct CostFit {
  double elem_bytes = 4;  // bytes per element in the bench (fp32 on CPU)
  std::array<PhaseFit, kMoePhases> phases;
  int rows = 0;    // configurations fitted
  int ep_max = 1;  // largest ep among them (the fitted machine's own point)
};

struct FitOptions {
  double elem_bytes = 4;        // bytes per element of the measured runs
  double time_floor_ms = 1e-3;  // relative weights 1/max(t, floor): least squares on relative error
};

// Fits every phase on `samples` (all of them; select the rows first). Needs at least one sample.
CostFit fit_cost_model(const std::vector<CostSample>& samples, const FitOptions& opt = {});

// ms of `phase` for `w` under `fit` (0 for an all-to-all at ep = 1 or an unfitted phase).
double predict_phase_ms(const CostFit& fit, MoePhase phase, const PhaseWork& w);

// The phase's processing rate from its work slope: GFLOP/s (route 2·T·H·E flops per unit, route_bwd 4, experts
// 6·rows·H·I i.e. three GEMMs, experts_bwd 12), GB/s of rows moved (permute family: elem_bytes per T·K·H unit;
// all-to-alls: 1/β), M(token,slot)/s for plan (T·K). `unit` gets the unit's name; 0 when the slope is 0.
double phase_rate(const CostFit& fit, MoePhase phase, std::string* unit);
// α of an all-to-all phase in µs per peer (0 for compute phases).
double a2a_alpha_us(const CostFit& fit, MoePhase phase);

// ---- validation ----

enum class ValidationMethod { HeldOut, LeaveOneOut };

// One configuration's measured and predicted times (the prediction comes from a fit that did not see it when it
// is a held-out or leave-one-out row; in-sample for fitting rows under HeldOut).
struct SamplePrediction {
  int index = 0;  // position in the samples vector (CSV data row order)
  bool validated = false;  // true: predicted out of sample, counted in the errors
  std::array<double, kMoePhases> ms{}, pred_ms{};
  double layer_ms = 0, pred_layer_ms = 0;        // measured layer_ms vs Σ predicted phases
  double overhead_pct = 0, pred_overhead_pct = 0;
};

struct PhaseError {
  int rows = 0;                             // validated rows with a measurable time (≥ time_floor_ms)
  double mape_mean = 0, mape_max = 0;       // % absolute error relative to the measured phase time
  double share_mean = 0;                    // mean share of the layer time (%), to weigh the phase's error
};

struct Validation {
  ValidationMethod method = ValidationMethod::HeldOut;
  int rows = 0;                                    // validated configurations
  double layer_mape_mean = 0, layer_mape_max = 0;  // %, layer time
  double overhead_err_pp_mean = 0, overhead_err_pp_max = 0;  // |pred − meas| overhead share, percentage points
  double phase_sum_vs_layer_pct = 0;  // mean (Σ measured phases / layer_ms − 1)·100 over all rows: timer coverage
  std::array<PhaseError, kMoePhases> phases{};
  int ep1_a2a_rows = 0;  // validated ep = 1 rows (their all-to-alls predict 0)
};

// Fits on the held_out = 0 rows and predicts the held_out = 1 rows; without held-out rows, leave-one-out over all
// rows (method says which). `fit` gets the fit on the fitting rows (all rows under leave-one-out).
Validation validate_cost_model(const std::vector<CostSample>& samples, const FitOptions& opt, CostFit* fit,
                               std::vector<SamplePrediction>* predictions);

// ---- extrapolation ----

struct Link {
  double gbps = 0;        // GB/s (1e9 bytes/s) per GPU, one direction
  double latency_us = 0;  // per message
};
struct NetLinks {
  std::string name;  // "nvlink-ib", "nvlink-eth", "custom", or "fitted" (the bench machine's α-β)
  Link intra, inter;
};
// Presets: nvlink-ib (NVLink 450 GB/s 3 µs; InfiniBand NDR 50 GB/s 5 µs per GPU), nvlink-eth (NVLink; Ethernet
// 100G 12.5 GB/s 20 µs). BadInput for another name.
NetLinks net_preset(const std::string& name);
std::vector<std::string> net_preset_names();

// The model and cluster to extrapolate to. EP group = min(GPUs, experts, ep_max) rounded down to a divisor of both
// the GPU count and E; the remaining factor is expert-data parallelism (replicas of the EP group, no extra
// all-to-all traffic). EP groups are contiguous ranks: gpus_per_node consecutive GPUs share a node.
struct ScaleTarget {
  i64 hidden = 4096, ffn = 14336, experts = 8, topk = 2;
  i64 tokens = 4096;             // T per GPU per micro-batch
  double capacity_factor = 1.25;  // 0 = dropless
  double elem_bytes = 4;          // bytes per element moved by the all-to-alls and permutes
  int gpus_per_node = 8;
  int min_gpus = 8, max_gpus = 1024;  // powers of two from min_gpus to max_gpus
  int ep_max = 0;                     // 0: no cap besides experts
  double imbalance = 1.0;             // busiest GPU's rows / mean (1 = uniform routing)
  double compute_speedup = 1.0;       // divides every fitted compute phase (target device vs bench device)
};

// One GPU count of the table (one MoE layer, forward + backward, per GPU).
struct ScaleRow {
  int gpus = 0, nodes = 0, ep = 0, edp = 0;
  double remote_share = 0;     // share of a GPU's routed rows that go to other nodes, (ep − min(ep, gpn))/ep
  double a2a_bytes_gpu = 0;    // bytes one GPU sends to other GPUs over the layer's 4 exchanges (fwd + bwd)
  double a2a_ms = 0;           // the 4 exchanges
  double compute_ms = 0;       // every other phase
  double layer_ms = 0;
  double overhead_pct = 0;     // 100 · (layer − experts − experts_bwd) / layer
  double tok_s_gpu = 0, tok_s_total = 0;  // tokens/s of one MoE layer fwd + bwd
  std::array<double, kMoePhases> phase_ms{};
};

struct ScaleTable {
  NetLinks net;
  std::vector<ScaleRow> rows;
};

// Rows one GPU's experts compute: T·K·min(imbalance, cf) (cf = 0: T·K·imbalance).
double rows_per_gpu(const ScaleTarget& t);
// EP size for `gpus` GPUs under the rule above.
int ep_for(const ScaleTarget& t, int gpus);
// Time of one all-to-all (ms), two-stage hierarchical: a GPU's `bytes` routed rows (all of them, its own share
// included) spread uniformly over ep ranks; the share on its node (min(ep, gpn) − 1)/ep moves at intra bandwidth
// with (min(ep, gpn) − 1) messages, then the share on other nodes (ep − min(ep, gpn))/ep at inter bandwidth with
// one message per other node of the group (ceil(ep/gpn) − 1); the stages add.
double hierarchical_a2a_ms(double bytes, int ep, int gpus_per_node, const NetLinks& net);

// The table for one network: one row per GPU count. Compute phases from the fitted models at the target's dims
// (plan's ep−1 term replaced by a latency-only exchange on `net`); the 4 all-to-alls from hierarchical_a2a_ms.
ScaleTable extrapolate(const CostFit& fit, const ScaleTarget& t, const NetLinks& net);
// The bench machine's own point: the target dims at ep = fit.ep_max on one node, every phase (all-to-alls
// included, with their fitted α-β) from the fit.
ScaleRow fitted_point(const CostFit& fit, const ScaleTarget& t);

// ---- everything together (what moe-bench and moe-costmodel call) ----

struct CostReport {
  std::string source;  // the CSV path
  CostFit fit;
  Validation validation;
  std::vector<CostSample> samples;
  std::vector<SamplePrediction> predictions;
  ScaleTarget target;
  std::vector<ScaleTable> tables;  // one per network, the first is the one to print
  ScaleRow fitted;
};

CostReport run_cost_model(const std::vector<CostSample>& samples, const ScaleTarget& target,
                          const std::vector<NetLinks>& nets, const FitOptions& opt = {});

// "held-out prediction error: layer 7.3 % (mean), 12.1 % (max) over 6 configurations; per phase: ..." and the fit.
void print_validation(std::ostream& os, const CostReport& r);
// Aligned text table of report.tables[i] with the fitted machine's point first.
void print_scale_table(std::ostream& os, const CostReport& r, size_t i = 0);
// The same as Markdown (for the README).
std::string scale_table_markdown(const CostReport& r, size_t i = 0);
// Fit, validation, per-configuration predictions, target, every table and the fitted point.
nlohmann::json cost_report_json(const CostReport& r);

}  // namespace moe
