// Owns the metrics.jsonl → TensorBoard tag mapping (see tb_log.h).
#include "train/tb_log.h"

#include <string>
#include <vector>

namespace moe {

namespace {

void load_histograms(tb::TbEventWriter& w, const nlohmann::json& line, const char* key, const std::string& prefix,
                     int64_t step, const std::vector<int>& moe_layers) {
  const auto it = line.find(key);
  if (it == line.end() || !it->is_array()) return;
  for (size_t i = 0; i < it->size() && i < moe_layers.size(); ++i)
    w.expert_load_histogram(prefix + "layer" + std::to_string(moe_layers[i]), step,
                            (*it)[i].get<std::vector<int64_t>>());
}

}  // namespace

void log_metrics_to_tensorboard(tb::TbEventWriter& w, const nlohmann::json& line, const std::vector<int>& moe_layers) {
  const int64_t step = line.at("step").get<int64_t>();
  for (const auto& [k, v] : line.items()) {
    if (k == "step" || !v.is_number()) continue;
    if (k.rfind("eval_", 0) == 0)
      w.scalar("eval/" + k.substr(5), step, v.get<double>());
    else
      w.scalar("train/" + k, step, v.get<double>());
  }
  if (const auto it = line.find("router_layers"); it != line.end() && it->is_array())
    for (const auto& layer : *it) {
      const std::string prefix = "router/layer" + std::to_string(layer.at("layer").get<int>()) + "/";
      for (const auto& [k, v] : layer.items())
        if (k != "layer" && v.is_number()) w.scalar(prefix + k, step, v.get<double>());
    }
  load_histograms(w, line, "expert_load", "expert_load/", step, moe_layers);
  load_histograms(w, line, "eval_expert_load", "eval/expert_load/", step, moe_layers);
  w.flush();
}

}  // namespace moe
