// Owns the upcycling test tool: dense HF dir → upcycle_dense → save_hf_model (an HF MoE dir) for the oracles.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "core/error.h"
#include "io/hf_model.h"
#include "io/upcycle.h"

using namespace moe;

int main(int argc, char** argv) {
  CLI::App app{"moe-upcycle-dump: upcycle a dense HF model (llama/mistral/qwen3) and write it as an HF MoE dir"};
  UpcycleConfig u;
  std::string out;
  unsigned long long seed = 1234;
  double init_std = 0.02;
  app.add_option("--from", u.from, "dense HF model directory (upcycle.from)")->required();
  app.add_option("--out", out, "output HF MoE directory (config.json + model.safetensors)")->required();
  app.add_option("--num-experts", u.num_experts, "upcycle.num_experts")->capture_default_str();
  app.add_option("--top-k", u.top_k, "upcycle.top_k")->capture_default_str();
  app.add_option("--noise", u.noise, "upcycle.noise")->capture_default_str();
  app.add_option("--depth-pct", u.depth_pct, "upcycle.depth_pct")->capture_default_str();
  app.add_option("--seed", seed, "train.seed (Philox key)")->capture_default_str();
  app.add_option("--init-std", init_std, "router init std (model.init_std)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const UpcycledModel up = upcycle_dense(u, seed, init_std);
    save_hf_model(out, up.model, build_param_table(up.model), up.params.data());
    std::printf("upcycled %s → %s: %d layers, %d experts, top-%d\n", u.from.c_str(), out.c_str(),
                up.model.num_layers, up.model.num_experts, up.model.top_k);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "moe-upcycle-dump: %s\n", e.what());
    return e.exit_code();
  }
}
