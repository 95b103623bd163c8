// Owns the moe-costmodel command line (issue 13 item 5): moe_bench.csv → fit, held-out error, extrapolated routing-overhead table (text, Markdown, JSON).
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench/cost_model.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moe-costmodel: fit moe-bench's per-phase times (compute rates, all-to-all alpha-beta), report the "
               "held-out prediction error and extrapolate routing overhead to 8..1024 GPUs (docs/COST_MODEL.md)"};
  std::string csv, json_out, md_out, net = "nvlink-ib";
  moe::ScaleTarget t;
  moe::FitOptions fo;
  moe::Link intra, inter;
  app.add_option("csv", csv, "moe_bench.csv written by moe-bench")->required();
  app.add_option("--hidden", t.hidden, "target hidden size H")->capture_default_str();
  app.add_option("--ffn", t.ffn, "target expert intermediate size I")->capture_default_str();
  app.add_option("--experts", t.experts, "target experts E")->capture_default_str();
  app.add_option("--topk", t.topk, "target top-k K")->capture_default_str();
  app.add_option("--tokens", t.tokens, "target tokens per GPU per micro-batch T")->capture_default_str();
  app.add_option("--capacity", t.capacity_factor, "target capacity factor (0 = dropless)")->capture_default_str();
  app.add_option("--elem-bytes", t.elem_bytes, "target bytes per element moved (4 fp32, 2 bf16)")
      ->capture_default_str();
  app.add_option("--bench-elem-bytes", fo.elem_bytes, "bytes per element of the measured runs")->capture_default_str();
  app.add_option("--net", net, "network: nvlink-ib, nvlink-eth or custom (with the four link flags)")
      ->check(CLI::IsMember({"nvlink-ib", "nvlink-eth", "custom"}))
      ->capture_default_str();
  auto* ig = app.add_option("--intra-gbps", intra.gbps, "custom: intra-node GB/s per GPU (one direction)");
  auto* iu = app.add_option("--intra-us", intra.latency_us, "custom: intra-node latency per message, us");
  auto* eg = app.add_option("--inter-gbps", inter.gbps, "custom: inter-node GB/s per GPU (one direction)");
  auto* eu = app.add_option("--inter-us", inter.latency_us, "custom: inter-node latency per message, us");
  app.add_option("--gpus-per-node", t.gpus_per_node, "GPUs per node")->capture_default_str();
  app.add_option("--min-gpus", t.min_gpus, "smallest GPU count of the table")->capture_default_str();
  app.add_option("--max-gpus", t.max_gpus, "largest GPU count (powers of two from --min-gpus)")->capture_default_str();
  app.add_option("--ep-max", t.ep_max, "cap on the EP size (0: experts)")->capture_default_str();
  app.add_option("--imbalance", t.imbalance, "busiest GPU's rows / mean (1 = uniform routing)")->capture_default_str();
  app.add_option("--compute-speedup", t.compute_speedup, "target compute / bench compute speed (divides compute phases)")
      ->capture_default_str();
  app.add_option("--json", json_out, "write fit, validation, predictions and every network's table as JSON");
  app.add_option("--markdown", md_out, "write the selected network's table as Markdown");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    const bool custom = net == "custom";
    for (const CLI::Option* o : {ig, iu, eg, eu}) {
      MT_INPUT_CHECK(!custom || o->count(), "--net custom needs ", o->get_name());
      MT_INPUT_CHECK(custom || !o->count(), o->get_name(), " applies to --net custom only");
    }
    std::vector<moe::NetLinks> nets = {custom ? moe::NetLinks{"custom", intra, inter} : moe::net_preset(net)};
    for (const std::string& n : moe::net_preset_names())  // the JSON carries every preset (the plot compares them)
      if (n != net) nets.push_back(moe::net_preset(n));
    moe::CostReport r = moe::run_cost_model(moe::read_bench_csv(csv), t, nets, fo);
    r.source = csv;
    moe::print_validation(std::cout, r);
    std::cout << "\n";
    moe::print_scale_table(std::cout, r);
    const auto write = [](const std::string& path, const std::string& text) {
      std::ofstream f(path);
      f << text;
      f.close();
      MT_INPUT_CHECK(f.good(), path, ": cannot write");
    };
    if (!json_out.empty()) write(json_out, moe::cost_report_json(r).dump(1) + "\n");
    if (!md_out.empty()) write(md_out, moe::scale_table_markdown(r));
    return 0;
  } catch (const moe::Error& e) {
    std::cerr << "moe-costmodel: " << e.what() << "\n";
    return e.exit_code();
  }
}
