// Owns the resolved run configuration: every key of DESIGN §6 with its default (yaml-cpp stays in config.cpp).
#pragma once
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace moe {

enum class Arch { Mixtral, Qwen3Moe };
enum class DropPolicy { Probs, Position };
enum class AuxScope { Micro, Global };
enum class AuxForm { Layer, Hf };
enum class Device { Cpu, Cuda };
enum class Precision { Fp32, Bf16 };
// Activation recomputation (train.recompute): what backward recomputes instead of keeping from forward.
enum class Recompute { None, Selective, Full };
enum class Schedule { Cosine, Constant };
enum class PeftMethod { Full, Lora, Qlora };
enum class DataFormat { Tokens, Jsonl, Text };
enum class TokenDtype { U32, U16 };
enum class CommBackend { Auto, Mpi, Nccl };

struct ModelConfig {
  Arch arch = Arch::Mixtral;
  int vocab_size = 256;
  int hidden_size = 64;
  int intermediate_size = 128;      // Mixtral expert width; Qwen3 dense-MLP width
  int moe_intermediate_size = 0;    // Qwen3 expert width (0 → intermediate_size)
  int num_layers = 2;
  int num_heads = 4;
  int num_kv_heads = 2;
  int head_dim = 0;                 // 0 → hidden_size / num_heads
  int num_experts = 4;
  int top_k = 2;
  bool norm_topk_prob = true;       // Mixtral always renormalises
  double rope_theta = 1e6;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  double init_std = 0.02;
  // Qwen3-MoE dense/sparse layer choice (model.mlp_only_layers / model.decoder_sparse_step, or config.json).
  std::vector<int> mlp_only_layers;
  int decoder_sparse_step = 1;
  // Sliding-window attention (model.sliding_window, or config.json as transformers reads it): token i attends to
  // positions i−N+1..i only; 0 = full causal attention. Applies to every layer. [C4.attention]
  int sliding_window = 0;
  // config.json pad_token_id (HF nn.Embedding padding_idx): that embedding row gets no gradient from the lookup;
  // −1 = none. Only from config.json (not a YAML key).
  int pad_token_id = -1;

  int resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_heads; }
  int expert_width() const {
    if (arch == Arch::Qwen3Moe && moe_intermediate_size > 0) return moe_intermediate_size;
    return intermediate_size;
  }
  // Layer l uses the MoE block (else a dense SwiGLU MLP of intermediate_size). [C4.layer]
  bool is_moe_layer(int l) const {
    if (arch == Arch::Mixtral) return true;
    for (int x : mlp_only_layers)
      if (x == l) return false;
    return num_experts > 0 && decoder_sparse_step > 0 && (l + 1) % decoder_sparse_step == 0;
  }
};

struct UpcycleConfig {
  std::string from;
  int num_experts = 8;
  int top_k = 2;
  double noise = 0.0;
  double depth_pct = 0.0;
};

struct MoeConfig {
  double capacity_factor = 0.0;     // 0 = dropless
  DropPolicy drop_policy = DropPolicy::Probs;
  double aux_loss_coef = 0.01;
  AuxScope aux_loss_scope = AuxScope::Micro;
  AuxForm aux_loss_form = AuxForm::Layer;
  double z_loss_coef = 0.0;
  double router_jitter = 0.0;
  double router_temperature = 1.0;
  double expert_dropout = 0.0;
  double bias_update_rate = 0.0;
  // Dropless receive buffers hold factor·T·K rows per rank (0 = ep, the exact worst case); a rank that would
  // receive more stops every rank with exit 2 naming this key. [C4.capacity]
  double dropless_buffer_factor = 0.0;
};

struct ParallelConfig {
  int ep = 1;
  int zero = 0;
  CommBackend backend = CommBackend::Auto;
};

struct TrainConfig {
  Device device = Device::Cpu;
  Precision precision = Precision::Fp32;
  int seq_len = 64;
  int micro_batch = 4;
  int grad_accum = 1;
  int steps = 10;
  double lr = 1e-3;
  double min_lr = 0.0;
  int warmup_steps = 0;
  Schedule schedule = Schedule::Cosine;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;
  unsigned long long seed = 1234;
  // Loss-spike guard: stop (exit 3) when a step's loss exceeds this × the median of the last
  // kLossWindow losses; 0 turns it off.
  double max_loss_ratio = 10.0;
  Recompute recompute = Recompute::None;
  // Router collapse guard: stop (exit 3, checkpoints kept) at a logged step where some MoE layer's expert
  // utilization < 0.5 or load imbalance > 4 (train/stability.h).
  bool stop_on_collapse = false;
  // Peak dense TFLOP/s of one device at train.precision, the denominator of MFU in metrics.jsonl;
  // 0 = the known device's datasheet value (CUDA) or an sgemm measured at start-up (CPU).
  double peak_tflops = 0.0;
};

struct PeftConfig {
  PeftMethod method = PeftMethod::Full;
  int r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  std::vector<std::string> targets;
  bool train_router = false;  // PEFT and field default: the router stays frozen unless asked
  std::string quant = "nf4";
  bool double_quant = false;
  bool use_rslora = false;  // scaling alpha/√r (PEFT use_rslora) instead of alpha/r
};

struct DataConfig {
  DataFormat format = DataFormat::Tokens;
  std::string path;
  TokenDtype dtype = TokenDtype::U32;
  std::string tokenizer;
  std::string chat_template;
  bool mask_prompt = false;
  std::vector<std::pair<std::string, double>> mix;  // (path, weight)
  bool shuffle = false;
  bool reset_attention = false;
};

struct CheckpointConfig {
  std::string dir;      // "" → run.dir/checkpoints
  int every = 0;
  int keep = 3;
  bool on_signal = true;
  bool export_hf = false;  // also write run.dir/hf (HF model dir) at the end of training
};

struct LogConfig {
  int every = 1;
  bool plots = false;
  bool tensorboard = false;  // run.dir/tb: TensorBoard event files (scalars of every metric, expert-load histograms)
  // Field advice as warnings (train/stability.h): LoRA without expert targets, lr outside the LoRA-on-MoE range,
  // a small effective batch, and degraded router health at logged steps.
  bool stability_warnings = true;
};

// Held-out evaluation (DESIGN §5 eval): forward only, Mode::Eval (no jitter, no dropout), the run's routing.
struct EvalConfig {
  std::string data;      // eval token file, read like data.path (data.format, data.dtype); "" = no evaluation
  int every = 0;         // evaluate after every `every` updates (0: only at the end of training)
  int batches = 0;       // global batches of eval windows per evaluation (0: every full global batch of the file)
  bool at_start = false;  // also evaluate before the first update (metrics line "step": 0)
};

struct RunConfig {
  std::string name = "run";
  std::string dir;      // "" → runs/<name>
  bool overwrite = false;  // a new run may replace the checkpoints of an earlier run in its checkpoint dir
};

struct Config {
  RunConfig run;
  ModelConfig model;
  std::string model_init_from;  // model.init_from
  std::string model_adapter_from;  // model.adapter_from: an existing PEFT adapter dir to continue from
  UpcycleConfig upcycle;
  MoeConfig moe;
  ParallelConfig parallel;
  TrainConfig train;
  PeftConfig peft;
  DataConfig data;
  CheckpointConfig checkpoint;
  LogConfig log;
  EvalConfig eval;
  std::string source_path;       // the YAML file this came from (for messages)
  std::set<std::string> given;   // keys the YAML or a --set gave (e.g. "moe.aux_loss_coef"); others are defaults

  std::string resolved_run_dir() const { return run.dir.empty() ? "runs/" + run.name : run.dir; }
};

// Reads CONFIG.yaml, applies `--set key=value` overrides (in order), validates every key.
// Throws moe::Error(BadInput) naming the file, the key path, what came and what is allowed.
Config load_config(const std::string& yaml_path, const std::vector<std::string>& overrides);

// Same, from YAML text (tests); `origin` names the source in messages.
Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides,
                    const std::string& origin);

// Which spelling the model keys have in messages: the run YAML (model.num_heads) or an HF config.json
// (num_attention_heads).
enum class ModelKeys { Yaml, HfConfig };

// Shape checks every model must pass, whichever file it came from: num_heads divisible by num_kv_heads,
// head_dim resolvable and even (RoPE rotates pairs), top_k <= num_experts, mlp_only_layers inside the model,
// at most 65536 layers / heads / experts, and at most 2^48 parameters (so no size product overflows).
// BadInput naming `origin` and the key (spelled as `keys` says).
void check_model_dims(const ModelConfig& m, const std::string& origin, ModelKeys keys);

// parallel.backend as run: auto is nccl when train.device is cuda (GPU buffers), mpi when it is cpu (host buffers);
// mpi and nccl are returned as given (unsupported_options refuses a backend that does not match the device).
CommBackend resolve_comm_backend(const Config& cfg);

// The resolved configuration as YAML text (every key, defaults filled) — logged and later checkpointed.
std::string config_to_yaml(const Config& cfg);

// Every key whose value differs between two configs, as "key: old -> new" in schema order (values as
// config_to_yaml writes them). Used to log what a resume changes.
std::vector<std::string> config_changes(const Config& from, const Config& to);

}  // namespace moe
