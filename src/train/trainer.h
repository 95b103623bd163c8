// Owns the training loop of DESIGN §4–5 on one process: data order, micro-batches, objective, AdamW, metrics.
#pragma once
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "config/config.h"
#include "data/token_data.h"
#include "model/model.h"
#include "parallel/zero.h"
#include "io/peft_adapter.h"
#include "peft/base_weights.h"
#include "peft/lora.h"
#include "train/loss_guard.h"
#include "train/run_dir.h"
#include "train/metrics_log.h"
#include "train/model_flops.h"
#include "train/router_health.h"

namespace moe {

namespace tb {
class TbEventWriter;
}

// Everything one optimizer step measured (the fields of a metrics.jsonl line).
struct StepResult {
  int step = 0;              // updates done after this step (first = 1)
  double loss = 0;           // token-mean CE of the global batch, before the update
  double aux_loss = 0;       // mean over micro-batches
  double z_loss = 0;
  double lr = 0;
  double grad_norm = 0;      // before clipping
  i64 tokens = 0;             // tokens processed (global batch · seq_len)
  i64 loss_tokens = 0;        // targets counted in the loss (fewer under data.mask_prompt)
  i64 dropped = 0, pairs = 0;
  std::vector<std::vector<i64>> expert_load;  // [moe layer][E]
  // Per MoE layer router health of the global batch (reduced over ranks); churn is filled by the churn probe at
  // logged steps (Trainer::run), NaN otherwise.
  std::vector<LayerRouterHealth> router_layers;  // [moe layer]
  double step_time_s = 0;
  double model_tflops = 0;  // model FLOPs (model_flops.h) per second per rank, in TFLOP/s
  double mfu = std::numeric_limits<double>::quiet_NaN();  // model_tflops / peak; NaN: no peak known
};

// One held-out evaluation (eval.*): forward only, Mode::Eval (no jitter, no dropout), over the eval windows of
// every rank, reduced over the world. The eval set is the first `batches` global batches of eval.data (window
// b·B + j, B = micro_batch × grad_accum × world, the training order of C5.order without wrap; eval.batches 0 =
// every full global batch), so every layout with the same global batch sees the same tokens.
struct EvalResult {
  int step = 0;          // updates done when it ran (0: before the first update)
  double loss = 0;       // token-mean CE over every eval token
  double ppl = 0;        // exp(loss)
  double aux_loss = 0;   // mean over eval micro-batches (micro scope), unscaled
  double z_loss = 0;
  i64 tokens = 0;        // eval loss tokens
  i64 dropped = 0, pairs = 0;
  std::vector<std::vector<i64>> expert_load;  // [moe layer][E] over the eval set
  double time_s = 0;
};

// Where the trainer computes. Production passes the default: train.device picks the backend
// (make_backend<T>(device, local_rank % visible GPUs)) and, for cuda, NCCL over the host world carries the data.
// Tests replace the pieces (tests/unit/guarded_backend.h: CPU ops behind a device-like memory guard).
struct TrainerDevice {
  std::function<std::unique_ptr<Backend<float>>()> make_fp32;  // null: make_backend<float>(train.device, gpu)
  std::function<std::unique_ptr<Backend<bf16>>()> make_bf16;   // null: make_backend<bf16>(train.device, gpu)
  // The world communicator over the backend's memory (gradients, gathers, EP rows), built over the host world;
  // null: the host world itself for train.device: cpu, make_nccl_world for cuda.
  std::function<std::unique_ptr<Communicator>(Communicator& host_world)> make_data_world;
  int local_rank = -1;  // picks the GPU (local_rank % visible GPUs); -1: from the launcher's environment
};

class Trainer {
 public:
  // world: all ranks (a self communicator for one process), over host memory: it carries control traffic
  // (statistics, stop flags, EP row counts, checkpoint I/O). Experts are split over groups of parallel.ep
  // consecutive ranks; world = ep × expert_dp.
  Trainer(const Config& cfg, Communicator& world, const TrainerDevice& device = {});
  // While an exception unwinds (an error of this rank alone), the device communicators are torn down first (an
  // NCCL communicator then aborts: see comm/nccl_comm.cpp), before any device memory is freed: a peer that never
  // joins the collectives in flight must not hold this rank's exit (and its error message) back.
  ~Trainer();

  // The whole run: steps train.steps updates (from the resumed step), progress lines, run.dir/metrics.jsonl,
  // checkpoints every checkpoint.every steps, at the end, and on SIGUSR1/SIGTERM (then it returns early).
  void run();

  // --resume: "auto" (newest complete, verified checkpoint of checkpoint.dir; none → fresh start) or a path
  // (must be valid, else BadInput). Restores weights, moments, bias and the step; any layout may read it.
  void resume(const std::string& what);
  // Writes checkpoint.dir/step_<N>.h5 (temporary name, then renamed), points `latest` at it, prunes to
  // checkpoint.keep. Collective. Returns the path.
  std::string save_checkpoint();
  int start_step() const { return start_step_; }
  // The run's claim on its directories (main() holds it); each checkpoint first checks it is still intact.
  void set_run_dir_claim(const RunDirClaim* claim) { run_dir_claim_ = claim; }
  bool stopped_by_signal() const { return stopped_by_signal_; }

  // Forward + backward of every micro-batch of step s into grads() (no update). If `logits` is given,
  // it receives the logits of the global batch [B, L, V] in window order (as float; bf16 logits widened).
  // The result lives in the trainer (reused every step: nothing is allocated in the step loop) until the next call.
  const StepResult& compute_grads(int s, std::vector<float>* logits = nullptr);
  // compute_grads + clipping + AdamW + bias update.
  const StepResult& step(int s);
  // Held-out loss, perplexity and router load on eval.data after `updates` updates (EvalResult). Collective;
  // MT_CHECK that eval.data is set. Reuses the trainer's buffers (nothing allocated after the first call).
  const EvalResult& evaluate(int updates);

  const ParamTable& table() const { return model_ ? model_->table() : model16_->table(); }
  // LoRA/QLoRA: the frozen base linears (empty for full fine-tuning) and the adapter spec (method Full: none).
  const ParamTable& base_table() const { return model_ ? model_->base_table() : model16_->base_table(); }
  const LoraSpec& lora() const { return lora_; }
  // Bytes of the stored base weights (0 for full fine-tuning): NF4 codes + scales under QLoRA.
  i64 base_weight_bytes() const;
  // Host copy of base-table unit `unit` as the model reads it (bf16 widened; QLoRA: dequantized), LoRA/QLoRA only.
  std::vector<float> base_unit_to_host(int unit);
  const ModelConfig& model_config() const { return cfg_.model; }
  int rank() const { return rank_; }
  const Config& config() const { return cfg_; }
  // Host copies of the flat local parameters / gradients in table layout (parameters: ZeRO stages 0–2;
  // gradients: stages 0–1 with every entry trainable).
  std::vector<float> params();
  // The full logical model (all experts) in build_param_table(model_config(), lora()) layout (LoRA/QLoRA: the state
  // with every expert's adapters, no base linears), on every rank.
  // Collective over the world.
  std::vector<float> gather_full_params();
  std::vector<float> grads() const { return state_->flat_grads(); }
  const ParamState& state() const { return *state_; }
  // The fp32 model (train.precision: fp32 only; MT_CHECK otherwise).
  const Model<float>& model() const;
  i64 activation_bytes() const { return model_ ? model_->activation_bytes() : model16_->activation_bytes(); }

 private:
  void init_params();
  int num_moe_layers() const { return model_ ? model_->num_moe_layers() : model16_->num_moe_layers(); }
  // One micro-batch (inputs_/targets_) through the model of train.precision, weights from state_.
  const MicroStats& forward_micro(const RngCtx& rng);
  void backward_micro(const LossScales& sc, const GlobalRouting* global);
  void copy_logits(float* dst, i64 n) const;  // the last forward's logits (bf16: widened)
  void reduce_stats(StepResult& r, double& ce, double& aux, double& z);
  StepResult result_;                  // the last step's result, sized once ([moe layer][E] loads)
  GlobalRouting global_;               // aux_loss_scope global: the pre-pass counts, sized once
  std::vector<int64_t> stat_counts_;   // [Lm·E + 2 + 2·Lm] router counts reduced over the world
  std::vector<double> stat_sums_;      // [3 + 3·Lm] ce, aux, z, then per layer aux, z, Σ‖logits‖²
  std::vector<int64_t> layer_drops_;   // [2·Lm] per layer dropped, pairs (this rank, then reduced)
  // Routing churn: this rank's probe micro-batch (the first window of step 0's data order), its routing at the
  // last logged step, and the host copy of the current one.
  RoutingChurn churn_;
  std::vector<std::vector<int>> probe_topk_;
  void measure_churn(StepResult& r);
  ModelFlops flops_{};
  std::vector<int> moe_layer_ids_;  // [moe layer] its decoder layer (Qwen3 dense layers have none)
  double peak_tflops_ = 0;  // of one device; 0: unknown (no MFU)
  void write_metrics(const StepResult& r, bool with_load, const EvalResult* eval);
  void log_eval(const EvalResult& e) const;
  std::unique_ptr<TokenData> eval_data_;  // eval.data (null without)
  i64 eval_batches_ = 0;                  // global batches per evaluation
  EvalResult eval_;

  Config cfg_;
  Communicator& world_comm_;
  std::unique_ptr<Communicator> ep_comm_, edp_comm_;  // expert-parallel and expert-data-parallel groups (host)
  Communicator* dworld_ = nullptr;  // data_world_ or world_comm_ (and the same for the groups)
  Communicator* dep_ = nullptr;
  Communicator* dedp_ = nullptr;
  int rank_ = 0, world_ = 1, ep_ = 1;
  // The model of train.precision (one of the two), on its backend.
  std::unique_ptr<Backend<float>> backend_;
  std::unique_ptr<Model<float>> model_;                        // fp32
  std::unique_ptr<Backend<bf16>> backend16_;
  std::unique_ptr<Model<bf16>> model16_;                       // bf16 (DESIGN §8)
  // Over the backend's memory (null when that is host memory: the host communicators above carry everything).
  // Declared after the backends and before the state: destroyed after ParamState (which completes its requests)
  // and before the backend's stream and memory (NCCL is torn down while the GPU context it follows still exists).
  std::unique_ptr<Communicator> data_world_, data_ep_, data_edp_;
  std::unique_ptr<TokenData> data_;
  std::unique_ptr<ParamState> state_;                         // params, grads, AdamW moments (ZeRO stage)
  // LoRA/QLoRA: the frozen base linears (dense T or NF4) and the access that joins them to the state.
  LoraSpec lora_{};
  std::unique_ptr<AdapterSet> adapter_from_;  // model.adapter_from, read once; its values staged by init_params
  std::unique_ptr<BaseWeights<float>> base32_;
  std::unique_ptr<BaseWeights<bf16>> base16_;
  std::unique_ptr<ParamAccess<float>> peft_access32_;
  std::unique_ptr<ParamAccess<bf16>> peft_access16_;
  ParamAccess<float>& access32();
  ParamAccess<bf16>& access16();
  std::vector<std::vector<float>> select_bias_;                // [moe layer][E] aux-loss-free bias
  std::vector<int32_t> inputs_, targets_;                      // [B·L] one micro-batch (host)
  Buffer<int32_t> inputs_dev_, targets_dev_;                   // the same in the backend's memory
  std::vector<int32_t> doc_start_;                             // [B·L] data.reset_attention: document starts (host)
  Buffer<int32_t> doc_start_dev_;                              // the same in the backend's memory
  mutable std::vector<bf16> logits16_;                         // copy_logits staging (bf16 runs)
  MemOps& mem() const { return backend_ ? *backend_->mem : *backend16_->mem; }
  LossSpikeGuard loss_guard_;
  const RunDirClaim* run_dir_claim_ = nullptr;
  MetricsLog metrics_;                                         // run.dir/metrics.jsonl (rank 0)
  std::unique_ptr<tb::TbEventWriter> tb_;                      // run.dir/tb (rank 0, log.tensorboard)
  void append_metrics(const nlohmann::json& line);             // metrics.jsonl + TensorBoard
  int start_step_ = 0;       // first step this process runs (resume)
  int steps_done_ = 0;       // updates done so far
  bool stopped_by_signal_ = false;
  // Reads one checkpoint into this trainer; "" on success, else why it is unusable (collective verdict).
  std::string load_checkpoint(const std::string& path);
};

// Resolves model shape from model.init_from's config.json when set (DESIGN §6).
Config resolve_model_config(const Config& cfg);
// Stops (BadInput, exit 2) on options this build does not implement yet (unsupported_options in preflight.h).
void check_supported(const Config& cfg);

}  // namespace moe
