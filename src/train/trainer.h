// Owns the training loop of DESIGN §4–5 on one process: data order, micro-batches, objective, AdamW, metrics.
#pragma once
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "data/token_data.h"
#include "model/model.h"

namespace moe {

// Everything one optimizer step measured (the fields of a metrics.jsonl line).
struct StepResult {
  int step = 0;              // updates done after this step (first = 1)
  double loss = 0;           // token-mean CE of the global batch, before the update
  double aux_loss = 0;       // mean over micro-batches
  double z_loss = 0;
  double lr = 0;
  double grad_norm = 0;      // before clipping
  i64 tokens = 0;
  i64 dropped = 0, pairs = 0;
  std::vector<std::vector<i64>> expert_load;  // [moe layer][E]
  double step_time_s = 0;
};

class Trainer {
 public:
  explicit Trainer(const Config& cfg);
  ~Trainer();

  // The whole run: steps train.steps updates, progress lines, run.dir/metrics.jsonl.
  void run();

  // Forward + backward of every micro-batch of step s into grads() (no update). If `logits` is given,
  // it receives the logits of the global batch [B, L, V] in window order.
  StepResult compute_grads(int s, std::vector<float>* logits = nullptr);
  // compute_grads + clipping + AdamW + bias update.
  StepResult step(int s);

  const ParamTable& table() const { return model_->table(); }
  const ModelConfig& model_config() const { return cfg_.model; }
  const Config& config() const { return cfg_; }
  std::vector<float>& params() { return params_; }
  const std::vector<float>& grads() const { return grads_; }

 private:
  void init_params();
  void write_metrics(const StepResult& r, bool with_load);

  Config cfg_;
  int rank_ = 0, world_ = 1;
  std::unique_ptr<Model<float>> model_;
  std::unique_ptr<TokenData> data_;
  std::vector<float> params_, grads_, exp_avg_, exp_avg_sq_;  // [total_numel] each
  std::vector<std::vector<float>> select_bias_;                // [moe layer][E] aux-loss-free bias
  std::vector<int32_t> inputs_, targets_;                      // [B·L] one micro-batch
  std::ofstream metrics_;
};

// Resolves model shape from model.init_from's config.json when set (DESIGN §6).
Config resolve_model_config(const Config& cfg);
// Stops (BadInput) on options this build cannot train yet (CUDA, bf16, EP/ZeRO, PEFT, upcycling).
void check_supported(const Config& cfg);

}  // namespace moe
