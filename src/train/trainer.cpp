// Owns the single-process training loop: batches in DESIGN §5 order, the §4 objective, clipping, AdamW, metrics.
#include "train/trainer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "io/hf_export.h"
#include "io/hf_model.h"
#include "io/peft_adapter.h"
#include "io/peft_state.h"
#include "io/param_source.h"
#include "kernels/ref/cross_entropy_ref.h"  // kIgnoreTarget
#include "launch/launch_env.h"
#include "optim/adamw.h"
#include "train/checkpoint_files.h"
#include "train/machine_memory.h"
#include "train/memory_plan.h"
#include "train/preflight.h"
#include "train/router_health.h"
#include "train/run_plots.h"
#include "train/runtime.h"
#include "train/stability.h"
#include "train/stop_signal.h"
#include "train/tb_log.h"

namespace moe {

namespace fs = std::filesystem;

Config resolve_model_config(const Config& in) {
  Config cfg = in;
  if (!cfg.model_init_from.empty()) {
    MT_INPUT_CHECK(fs::is_directory(cfg.model_init_from), "model.init_from: '", cfg.model_init_from,
                   "' is not a directory (expected an HF model dir with config.json and *.safetensors)");
    const double init_std = cfg.model.init_std;
    cfg.model = read_hf_config(cfg.model_init_from);
    cfg.model.init_std = init_std;
    // Fine-tuning keeps the model's load-balancing loss: without moe.aux_loss_coef in the run's config, the
    // coefficient is config.json's router_aux_loss_coef (HF form; form layer: × top_k, the inverse of export's).
    const std::optional<double> hf_coef = read_hf_extras(cfg.model_init_from).router_aux_loss_coef;
    if (!cfg.given.count("moe.aux_loss_coef") && hf_coef)
      cfg.moe.aux_loss_coef = cfg.moe.aux_loss_form == AuxForm::Hf ? *hf_coef : *hf_coef * cfg.model.top_k;
  }
  if (!cfg.upcycle.from.empty()) {
    MT_INPUT_CHECK(cfg.model_init_from.empty(), "set either model.init_from or upcycle.from, not both");
    MT_INPUT_CHECK(fs::is_directory(cfg.upcycle.from), "upcycle.from: '", cfg.upcycle.from,
                   "' is not a directory (expected a dense HF model dir: config.json + *.safetensors)");
    cfg.model = upcycled_config(cfg.upcycle, cfg.model.init_std);
  }
  return cfg;
}

void check_supported(const Config& cfg) {
  const std::vector<std::string> why = unsupported_options(cfg);
  if (why.size() == 1) MT_INPUT_FAIL(why[0]);
  if (!why.empty()) {
    std::string all;
    for (const std::string& w : why) all += "\n  - " + w;
    MT_INPUT_FAIL(why.size(), " options are not implemented yet:", all);
  }
}

// Everything that can be checked before allocating (options, layout, data file, memory plan vs this machine),
// agreed over the ranks: a problem is reported once and every rank exits 2 cleanly. Returns the resolved config.
static Config checked_config(const Config& in, Communicator& world) {
  Config resolved;
  run_agreed(world, [&] { resolved = preflight(in, world.size(), PreflightMode::Run).cfg; });
  return resolved;
}

// The GPU of this process: local rank modulo the GPUs the driver shows (0 when it shows none: make_backend then
// refuses with its own message).
static int local_rank_of(const TrainerDevice& dev) {
  return dev.local_rank >= 0 ? dev.local_rank : detect_launch_env().local_rank;
}
static int local_gpu(int local_rank) {
  const int n = gpu_memory(local_rank).devices;
  return n > 0 ? local_rank % n : 0;
}

// NCCL over the host world (this build's CUDA path; without CUDA make_backend has refused train.device: cuda).
static std::unique_ptr<Communicator> nccl_data_world(Communicator& host_world, int local_rank) {
#ifdef MOE_HAVE_CUDA
  return make_nccl_world(host_world, local_rank);
#else
  (void)host_world;
  (void)local_rank;
  MT_CHECK(false, "NCCL communicators exist only in CUDA builds");
  return nullptr;
#endif
}

Trainer::Trainer(const Config& in, Communicator& world, const TrainerDevice& device)
    : cfg_(checked_config(in, world)), world_comm_(world), rank_(world.rank()), world_(world.size()),
      ep_(cfg_.parallel.ep), loss_guard_(cfg_.train.max_loss_ratio) {
  const auto& t = cfg_.train;
  const int E = cfg_.model.num_experts;
  const bool on_gpu = t.device == Device::Cuda;
  const int local_rank = on_gpu ? local_rank_of(device) : 0;
  const int gpu = on_gpu ? local_gpu(local_rank) : 0;
  // The backend first (a GPU backend selects its device before any communicator touches it).
  if (t.precision == Precision::Bf16)
    backend16_ = device.make_bf16 ? device.make_bf16() : make_backend<bf16>(t.device, gpu);
  else
    backend_ = device.make_fp32 ? device.make_fp32() : make_backend<float>(t.device, gpu);
  // EP groups: consecutive ranks; expert-DP groups: ranks with the same EP index. The host groups carry control
  // traffic; when the backend's memory is not host memory, a data world over it (NCCL on GPUs) is split the same way.
  ep_comm_ = world_comm_.split(rank_ / ep_, rank_);
  edp_comm_ = world_comm_.split(rank_ % ep_, rank_);
  dworld_ = &world_comm_;
  dep_ = ep_comm_.get();
  dedp_ = edp_comm_.get();
  if (device.make_data_world || on_gpu) {
    data_world_ = device.make_data_world ? device.make_data_world(world_comm_)
                                         : nccl_data_world(world_comm_, local_rank);
    data_ep_ = data_world_->split(rank_ / ep_, rank_);
    data_edp_ = data_world_->split(rank_ % ep_, rank_);
    void* stream = backend_ ? backend_->stream.handle : backend16_->stream.handle;
    for (Communicator* c : {data_world_.get(), data_ep_.get(), data_edp_.get()}) c->set_compute_stream(stream);
    dworld_ = data_world_.get();
    dep_ = data_ep_.get();
    dedp_ = data_edp_.get();
  }
  ExpertShardSpec shard;
  if (ep_ > 1) {
    shard.ep_comm = dep_;
    shard.ep_counts = ep_comm_.get();
    shard.ep = ep_;
    shard.first = (rank_ % ep_) * (E / ep_);
    shard.count = E / ep_;
  }
  // ZeRO ≥ 1 shards dense segments over the world and expert segments over the expert-DP group: pad for them.
  const int zero = cfg_.parallel.zero;
  const i64 dense_pad = zero >= 1 ? world_ : 1, expert_pad = zero >= 1 ? edp_comm_->size() : 1;
  if (!cfg_.model_adapter_from.empty()) {  // continue an existing PEFT adapter (either layout)
    adapter_from_ = std::make_unique<AdapterSet>(read_peft_adapter(cfg_.model_adapter_from, cfg_.model));
    MT_INPUT_CHECK(adapter_from_->router == RouterSave::Frozen || cfg_.peft.train_router, "model.adapter_from ",
                   cfg_.model_adapter_from, " carries a trained router (modules_to_save): set peft.train_router: true "
                   "to continue training it");
  }
  lora_ = run_lora_spec(cfg_, adapter_from_.get());
  const ModelOptions mo{AllocPolicy::Allocate, shard, dense_pad, expert_pad, t.recompute, lora_};
  if (t.precision == Precision::Bf16)  // DESIGN §8: bf16 weight copy and activations, fp32 state in ParamState
    model16_ = std::make_unique<Model<bf16>>(*backend16_, cfg_.model, cfg_.moe, t.micro_batch, t.seq_len, mo);
  else
    model_ = std::make_unique<Model<float>>(*backend_, cfg_.model, cfg_.moe, t.micro_batch, t.seq_len, mo);
  static_assert(kMaskedTarget == kIgnoreTarget, "masked targets must be the CE kernels' ignored label");
  data_ = std::make_unique<TokenData>(cfg_.data, cfg_.model.vocab_size, t.seq_len, t.seed, "data.path",
                                      i64(t.steps) * t.micro_batch * t.grad_accum * world_);
  if (!cfg_.eval.data.empty()) {
    DataConfig ed = cfg_.data;
    ed.path = cfg_.eval.data;
    ed.shuffle = false;
    eval_data_ = std::make_unique<TokenData>(ed, cfg_.model.vocab_size, t.seq_len, t.seed, "eval.data");
    const i64 B = i64(t.micro_batch) * t.grad_accum * world_;
    const i64 full = eval_data_->num_windows() / B;
    MT_INPUT_CHECK(full >= 1, "eval.data '", cfg_.eval.data, "': ", eval_data_->num_windows(), " windows of train.seq_len + 1 = ",
                   t.seq_len + 1, " tokens, fewer than one global batch (", B, " = micro_batch x grad_accum x ranks)");
    eval_batches_ = cfg_.eval.batches > 0 ? std::min<i64>(cfg_.eval.batches, full) : full;
    if (rank_ == 0 && cfg_.eval.batches > full)
      spdlog::warn("eval.batches {}: eval.data '{}' holds {} full global batches; evaluating those", cfg_.eval.batches,
                   cfg_.eval.data, full);
  }
  OptimOps& optim = backend_ ? *backend_->optim : *backend16_->optim;
  state_ = std::make_unique<ParamState>(table(), zero, *dworld_, *dedp_, *dep_, t.precision, optim, mem());
  if (lora_.active()) {
    // The base linears: T copies (LoRA) or NF4 blocks (QLoRA), replicated over data parallel, this rank's experts.
    const BaseStorage kind = lora_.method == PeftMethod::Qlora ? BaseStorage::Nf4 : BaseStorage::Dense;
    const Nf4DoubleQuant dq = cfg_.peft.double_quant ? Nf4DoubleQuant::on : Nf4DoubleQuant::off;
    if (model16_) {
      base16_ = std::make_unique<BaseWeights<bf16>>(base_table(), kind, dq, mem(), backend16_->quant.get());
      peft_access16_ = std::make_unique<PeftParamAccess<bf16>>(state_->access_bf16(),
                                                               [this](int u) { return base16_->unit(u); });
    } else {
      base32_ = std::make_unique<BaseWeights<float>>(base_table(), kind, dq, mem(), backend_->quant.get());
      peft_access32_ = std::make_unique<PeftParamAccess<float>>(state_->access(),
                                                                [this](int u) { return base32_->unit(u); });
    }
  }
  select_bias_.assign(num_moe_layers(), std::vector<float>(cfg_.model.num_experts, 0.f));
  inputs_.resize(size_t(t.micro_batch) * t.seq_len);
  targets_.resize(inputs_.size());
  inputs_dev_ = Buffer<int32_t>(mem(), i64(inputs_.size()), "input tokens");
  if (data_->packed_documents()) {  // data.reset_attention: where each token's document starts, per micro-batch
    doc_start_.resize(inputs_.size());
    doc_start_dev_ = Buffer<int32_t>(mem(), i64(inputs_.size()), "document starts");
    if (model_) model_->set_packed_documents(doc_start_dev_.data());
    if (model16_) model16_->set_packed_documents(doc_start_dev_.data());
  }
  targets_dev_ = Buffer<int32_t>(mem(), i64(targets_.size()), "target tokens");
  flops_ = model_flops(cfg_.model, lora_, t.seq_len);
  for (int l = 0; l < cfg_.model.num_layers; ++l)
    if (cfg_.model.is_moe_layer(l)) moe_layer_ids_.push_back(l);
  init_params();
}

Trainer::~Trainer() {
  if (std::uncaught_exceptions() > 0) {  // ParamState then skips its waits; nothing below uses the communicators
    data_edp_.reset();
    data_ep_.reset();
    data_world_.reset();
  }
}

const Model<float>& Trainer::model() const {
  MT_CHECK(model_, "Trainer::model(): the fp32 model exists only with train.precision: fp32");
  return *model_;
}

std::vector<float> Trainer::params() {
  MT_CHECK(cfg_.parallel.zero <= 2, "Trainer::params(): flat parameters exist only under ZeRO stages 0-2");
  return state_->local_params();
}

// The micro-batch's tokens (inputs_/targets_, host) are uploaded by load_micro; the model reads the copies.
ParamAccess<float>& Trainer::access32() { return peft_access32_ ? *peft_access32_ : state_->access(); }
ParamAccess<bf16>& Trainer::access16() { return peft_access16_ ? *peft_access16_ : state_->access_bf16(); }

i64 Trainer::base_weight_bytes() const {
  return base32_ ? base32_->stored_bytes() : base16_ ? base16_->stored_bytes() : 0;
}

std::vector<float> Trainer::base_unit_to_host(int unit) {
  MT_CHECK(lora_.active(), "base_unit_to_host: full fine-tuning keeps no separate base");
  const i64 n = base_table().units().at(size_t(unit)).size();
  std::vector<float> out(static_cast<size_t>(n));
  if (n == 0) return out;
  if (base32_) {
    mem().to_host(out.data(), base32_->unit(unit), n * i64(sizeof(float)));
  } else {
    std::vector<bf16> h(static_cast<size_t>(n));
    mem().to_host(h.data(), base16_->unit(unit), n * i64(sizeof(bf16)));
    for (i64 i = 0; i < n; ++i) out[size_t(i)] = float(h[size_t(i)]);
  }
  return out;
}

const MicroStats& Trainer::forward_micro(const RngCtx& rng) {
  const int32_t* in = inputs_dev_.data();
  const int32_t* tg = targets_dev_.data();
  if (model16_) return model16_->forward(access16(), in, tg, select_bias_, rng, Mode::Train);
  return model_->forward(access32(), in, tg, select_bias_, rng, Mode::Train);
}

void Trainer::backward_micro(const LossScales& sc, const GlobalRouting* global) {
  const int32_t* in = inputs_dev_.data();
  const int32_t* tg = targets_dev_.data();
  if (model16_)
    model16_->backward(access16(), in, tg, sc, cfg_.moe.aux_loss_form, global);
  else
    model_->backward(access32(), in, tg, sc, cfg_.moe.aux_loss_form, global);
}

void Trainer::copy_logits(float* dst, i64 n) const {
  if (model16_) {
    logits16_.resize(size_t(n));  // the first call sizes it (logits are a test/debug output)
    mem().to_host(logits16_.data(), model16_->logits(), n * i64(sizeof(bf16)));
    for (i64 i = 0; i < n; ++i) dst[i] = float(logits16_[size_t(i)]);
  } else {
    mem().to_host(dst, model_->logits(), n * i64(sizeof(float)));
  }
}

// Start-up staging one table unit at a time (memory: one fp32 unit buffer, see plan_memory's staging_bytes):
// each unit is filled, handed to ParamState (which keeps its shard), and the buffer reused for the next.
// LoRA/QLoRA: the state table's adapters get PEFT's init (peft/lora.h lora_init), then the base table is filled
// the same way from the same source and handed to BaseWeights (which stores it as T or quantizes it to NF4).
void Trainer::init_params() {
  auto stage = [&](const ParamTable& table, const std::function<void(int, const float*)>& store) {
    const ParamSource source(cfg_, table);  // model.init_from, upcycle.from or the seeded init
    i64 max_unit = 0;
    for (const ParamUnit& u : table.units()) max_unit = std::max(max_unit, u.size());
    std::vector<float> buf(size_t(max_unit), 0.f);
    for (const ParamUnit& u : table.units()) {
      const int unit = int(&u - table.units().data());
      std::fill(buf.begin(), buf.begin() + u.size(), 0.f);  // padding stays zero
      source.read_unit(unit, buf.data());
      for (const ParamInfo& p : table.entries())
        if (p.unit == unit && is_lora_name(p.name))
          lora_init(buf.data() + (p.offset - u.begin), p.name, p.shape, cfg_.train.seed);
      if (adapter_from_ && &table != &base_table()) adapter_set_to_unit(*adapter_from_, table, unit, buf.data());
      store(unit, buf.data());
    }
  };
  stage(table(), [&](int unit, const float* v) { state_->set_unit_params(unit, v); });
  state_->finish_set_params();
  if (base32_) stage(base_table(), [&](int unit, const float* v) { base32_->set_unit(unit, v); });
  if (base16_) stage(base_table(), [&](int unit, const float* v) { base16_->set_unit(unit, v); });
}

// contract: C5.order C4.objective
const StepResult& Trainer::compute_grads(int s, std::vector<float>* logits_out) {
  const auto& t = cfg_.train;
  const i64 mb = t.micro_batch, L = t.seq_len, V = cfg_.model.vocab_size;
  const i64 B = mb * t.grad_accum * world_;
  const i64 M = i64(t.grad_accum) * world_;
  // Loss tokens N: the targets that count over the whole global batch, on every rank (data.mask_prompt: labels -100
  // count neither in CE_sum nor in N) [C4.objective]; B·L without masking.
  double N = double(B * L);
  if (data_->masks_targets()) {
    N = 0;
    for (int a = 0; a < t.grad_accum; ++a)
      for (i64 i = 0; i < mb; ++i) N += double(data_->count_targets(i64(s) * B + (i64(a) * world_ + rank_) * mb + i));
    world_comm_.all_reduce_sum(&N, 1);
  }
  const int Lm = num_moe_layers();
  const int E = cfg_.model.num_experts;
  state_->zero_grads();
  if (logits_out) logits_out->assign(size_t(B * L * V), 0.f);

  auto load_micro = [&](i64 m) {
    int32_t* docs = doc_start_.empty() ? nullptr : doc_start_.data();
    for (i64 i = 0; i < mb; ++i)
      data_->window(i64(s) * B + m * mb + i, inputs_.data() + i * L, targets_.data() + i * L, docs ? docs + i * L : nullptr);
    if (docs) mem().to_backend(doc_start_dev_.data(), docs, i64(doc_start_.size() * sizeof(int32_t)));
    mem().to_backend(inputs_dev_.data(), inputs_.data(), i64(inputs_.size() * sizeof(int32_t)));
    mem().to_backend(targets_dev_.data(), targets_.data(), i64(targets_.size() * sizeof(int32_t)));
  };
  auto rng_for = [&](i64 m) {
    RngCtx r;
    r.seed = t.seed;
    r.step = uint32_t(s);
    r.global_micro = int(m);
    return r;
  };

  // aux_loss_scope global: a routing pre-pass over the whole global batch gives f_e before any backward. [C4.aux]
  GlobalRouting& global = global_;
  const bool use_global = cfg_.moe.aux_loss_scope == AuxScope::Global && Lm > 0;
  if (use_global) {
    global.routed.resize(size_t(Lm));
    for (auto& l : global.routed) l.assign(size_t(E), 0.0);  // sized on the first step, then only refilled
    global.tokens = double(B * L);
    for (int a = 0; a < t.grad_accum; ++a) {
      const i64 m = i64(a) * world_ + rank_;
      load_micro(m);
      const MicroStats& st = forward_micro(rng_for(m));
      for (int l = 0; l < Lm; ++l)
        for (int e = 0; e < E; ++e) global.routed[l][e] += double(st.router[l].routed[e]);
    }
    for (auto& l : global.routed) world_comm_.all_reduce_sum(l.data(), i64(l.size()));
  }

  StepResult& r = result_;
  r.step = s + 1;
  r.tokens = B * L;
  r.dropped = r.pairs = 0;
  r.step_time_s = 0;
  r.expert_load.resize(size_t(Lm));
  for (auto& l : r.expert_load) l.assign(size_t(E), 0);
  r.router_layers.resize(size_t(Lm));  // sized on the first step, then only refilled
  stat_sums_.assign(size_t(3 + 3 * Lm), 0.0);
  layer_drops_.assign(size_t(2 * Lm), 0);
  double ce = 0, aux = 0, z = 0;
  LossScales sc;
  sc.ce = N > 0 ? 1.0 / N : 0.0;  // a global batch of prompts only: no CE gradient, loss 0
  sc.aux = cfg_.moe.aux_loss_coef / double(M);
  sc.z = cfg_.moe.z_loss_coef / double(M);
  for (int a = 0; a < t.grad_accum; ++a) {
    const i64 m = i64(a) * world_ + rank_;
    load_micro(m);
    const MicroStats& st = forward_micro(rng_for(m));
    if (logits_out) copy_logits(logits_out->data() + m * mb * L * V, mb * L * V);
    ce += st.ce_sum;
    aux += aux_loss_value(st, cfg_.model, cfg_.moe.aux_loss_form, use_global ? &global : nullptr);
    z += z_loss_value(st);
    for (int l = 0; l < Lm; ++l) {
      for (int e = 0; e < E; ++e) r.expert_load[l][e] += st.router[l].routed[e];
      r.dropped += st.router[l].dropped;
      r.pairs += st.router[l].pairs;
      double* ls = stat_sums_.data() + 3 + 3 * l;
      ls[0] += aux_loss_layer_value(st, cfg_.model, cfg_.moe.aux_loss_form, use_global ? &global : nullptr, size_t(l));
      ls[1] += z_loss_layer_value(st, size_t(l));
      ls[2] += st.router[l].logit_sq_sum;
      layer_drops_[size_t(2 * l)] += st.router[l].dropped;
      layer_drops_[size_t(2 * l + 1)] += st.router[l].pairs;
    }
    backward_micro(sc, use_global ? &global : nullptr);
  }
  r.grad_norm = state_->reduce_grads();
  reduce_stats(r, ce, aux, z);
  r.loss = N > 0 ? ce / N : 0.0;
  r.loss_tokens = i64(N);
  r.aux_loss = aux / double(M);
  r.z_loss = z / double(M);
  r.lr = lr_at(t, s);
  for (int l = 0; l < Lm; ++l) {
    LayerRouterHealth& h = r.router_layers[size_t(l)];
    const RouterHealth lh = layer_health(r.expert_load[size_t(l)]);
    const double* ls = stat_sums_.data() + 3 + 3 * l;
    const i64 pairs = layer_drops_[size_t(2 * l + 1)];
    h.layer = moe_layer_ids_[size_t(l)];
    h.utilization = lh.expert_utilization;
    h.imbalance = lh.load_imbalance;
    h.entropy = lh.routing_entropy;
    h.dropped_frac = pairs ? double(layer_drops_[size_t(2 * l)]) / double(pairs) : 0.0;
    h.aux = ls[0] / double(M);
    h.z = ls[1] / double(M);
    h.logit_norm = std::sqrt(ls[2] / double(B * L));
    h.churn = std::numeric_limits<double>::quiet_NaN();
  }
  return r;
}

// Sums the step's statistics over all ranks (gradients are reduced by ParamState).
// Per-layer sums (stat_sums_ [3..], layer_drops_) are reduced in place.
void Trainer::reduce_stats(StepResult& r, double& ce, double& aux, double& z) {
  double* sums = stat_sums_.data();
  sums[0] = ce;
  sums[1] = aux;
  sums[2] = z;
  world_comm_.all_reduce_sum(sums, i64(stat_sums_.size()));
  ce = sums[0];
  aux = sums[1];
  z = sums[2];
  std::vector<int64_t>& counts = stat_counts_;
  counts.clear();  // keeps its capacity: allocated on the first step only
  for (const auto& l : r.expert_load) counts.insert(counts.end(), l.begin(), l.end());
  counts.push_back(r.dropped);
  counts.push_back(r.pairs);
  counts.insert(counts.end(), layer_drops_.begin(), layer_drops_.end());
  world_comm_.all_reduce_sum(counts.data(), i64(counts.size()));
  size_t i = 0;
  for (auto& l : r.expert_load)
    for (auto& c : l) c = counts[i++];
  r.dropped = counts[i++];
  r.pairs = counts[i++];
  for (auto& c : layer_drops_) c = counts[i++];
}

// contract: C5.clip C5.adamw C4.biasbalance
const StepResult& Trainer::step(int s) {
  const auto t0 = std::chrono::steady_clock::now();
  StepResult& r = result_;
  compute_grads(s);
  const auto& t = cfg_.train;
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    // Name the first tensor (by table order) whose gradient is not finite; no update, no checkpoint.
    std::string where = "a gradient shard";
    if (state_->has_flat_grads()) {  // ZeRO 0-1: the full local gradients (2-3 hold shards only)
      std::vector<float> g;           // host copy, one tensor at a time (the run is stopping: allocation is fine)
      for (const ParamInfo& p : table().entries()) {
        g.resize(size_t(p.numel));
        state_->flat_grads_to_host(g.data(), p.offset, p.numel);
        if (!std::all_of(g.begin(), g.end(), [](float x) { return std::isfinite(x); })) {
          where = p.name;
          break;
        }
      }
    }
    detail::raise(ErrorKind::Diverged, __FILE__, __LINE__, "training diverged at step ", s + 1, ": loss ", r.loss,
                  ", grad_norm ", r.grad_norm, "; first non-finite gradient: ", where,
                  " (rank ", rank_, "). Checkpoints already written are kept; lower train.lr or set train.grad_clip");
  }
  // Loss spike: the same verdict on every rank (the loss is already reduced); no update, no checkpoint.
  if (const double median = loss_guard_.spike_median(r.loss); median > 0)
    detail::raise(ErrorKind::Diverged, __FILE__, __LINE__, "loss spike at step ", s + 1, ": loss ", r.loss, " > ",
                  t.max_loss_ratio, " x ", std::max(median, LossSpikeGuard::kFloor), " (median of the last ",
                  loss_guard_.window_size(), " steps ", median, ", at least ", LossSpikeGuard::kFloor,
                  "; train.max_loss_ratio). Stopped before this step's update; checkpoints already written are "
                  "kept. Resume from one with a lower train.lr or a tighter train.grad_clip, or set "
                  "train.max_loss_ratio: 0 to turn the guard off");
  const double coef = clip_coef(r.grad_norm, t.grad_clip);
  if (coef < 1.0) state_->scale_grads(float(coef));
  state_->adamw(t, r.lr, long(s) + 1);
  if (cfg_.moe.bias_update_rate > 0) {
    for (size_t l = 0; l < select_bias_.size(); ++l) {
      double mean = 0;
      for (i64 c : r.expert_load[l]) mean += double(c);
      mean /= double(r.expert_load[l].size());
      for (size_t e = 0; e < select_bias_[l].size(); ++e) {
        const double diff = mean - double(r.expert_load[l][e]);
        select_bias_[l][e] += float(cfg_.moe.bias_update_rate * double((diff > 0) - (diff < 0)));
      }
    }
  }
  r.step_time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.model_tflops = r.step_time_s > 0 ? flops_.per_token * double(r.tokens) / r.step_time_s / double(world_) / 1e12 : 0;
  r.mfu = peak_tflops_ > 0 ? r.model_tflops / peak_tflops_ : std::numeric_limits<double>::quiet_NaN();
  return r;
}

// Routing churn at a logged step: this rank's probe micro-batch (micro-batch `rank` of step 0 in the data order of
// C5.order) is routed in Mode::Eval with the current weights and selection bias, and each MoE layer's top-k sets are
// compared with those of the last logged step; changed tokens and probe tokens are summed over the world.
// Collective (every rank logs at the same steps). The first call only records the routing (churn stays NaN).
void Trainer::measure_churn(StepResult& r) {
  const auto& t = cfg_.train;
  const i64 mb = t.micro_batch, L = t.seq_len;
  const int Lm = num_moe_layers();
  if (Lm == 0) return;
  int32_t* docs = doc_start_.empty() ? nullptr : doc_start_.data();
  for (i64 i = 0; i < mb; ++i)
    data_->window(i64(rank_) * mb + i, inputs_.data() + i * L, targets_.data() + i * L, docs ? docs + i * L : nullptr);
  if (docs) mem().to_backend(doc_start_dev_.data(), docs, i64(doc_start_.size() * sizeof(int32_t)));
  mem().to_backend(inputs_dev_.data(), inputs_.data(), i64(inputs_.size() * sizeof(int32_t)));
  mem().to_backend(targets_dev_.data(), targets_.data(), i64(targets_.size() * sizeof(int32_t)));
  RngCtx rng;  // Mode::Eval draws nothing
  rng.seed = t.seed;
  rng.global_micro = rank_;
  const int32_t* in = inputs_dev_.data();
  const int32_t* tg = targets_dev_.data();
  if (model16_) {
    model16_->capture_topk(&probe_topk_);
    model16_->forward(access16(), in, tg, select_bias_, rng, Mode::Eval);
    model16_->capture_topk(nullptr);
  } else {
    model_->capture_topk(&probe_topk_);
    model_->forward(access32(), in, tg, select_bias_, rng, Mode::Eval);
    model_->capture_topk(nullptr);
  }
  const std::vector<i64> changed = churn_.observe(probe_topk_, cfg_.model.top_k);
  if (changed.empty()) return;  // the first observation on every rank alike
  std::vector<int64_t> counts(changed.begin(), changed.end());
  counts.push_back(mb * L);
  world_comm_.all_reduce_sum(counts.data(), i64(counts.size()));
  for (int l = 0; l < Lm; ++l) r.router_layers[size_t(l)].churn = double(counts[size_t(l)]) / double(counts.back());
}

// contract: C5.eval
const EvalResult& Trainer::evaluate(int updates) {
  MT_CHECK(eval_data_ != nullptr, "evaluate: eval.data is not set");
  const auto t0 = std::chrono::steady_clock::now();
  const auto& t = cfg_.train;
  const i64 mb = t.micro_batch, L = t.seq_len;
  const i64 B = mb * t.grad_accum * world_;
  const int Lm = num_moe_layers(), E = cfg_.model.num_experts;
  EvalResult& e = eval_;
  e.step = updates;
  e.expert_load.resize(size_t(Lm));
  for (auto& l : e.expert_load) l.assign(size_t(E), 0);
  e.dropped = e.pairs = 0;
  double sums[4] = {0, 0, 0, 0};  // CE sum, aux, z, loss tokens
  for (i64 b = 0; b < eval_batches_; ++b) {
    for (int a = 0; a < t.grad_accum; ++a) {
      const i64 m = i64(a) * world_ + rank_;
      int32_t* docs = doc_start_.empty() ? nullptr : doc_start_.data();
      for (i64 i = 0; i < mb; ++i)
        eval_data_->window(b * B + m * mb + i, inputs_.data() + i * L, targets_.data() + i * L,
                           docs ? docs + i * L : nullptr);
      if (docs) mem().to_backend(doc_start_dev_.data(), docs, i64(doc_start_.size() * sizeof(int32_t)));
      mem().to_backend(inputs_dev_.data(), inputs_.data(), i64(inputs_.size() * sizeof(int32_t)));
      mem().to_backend(targets_dev_.data(), targets_.data(), i64(targets_.size() * sizeof(int32_t)));
      RngCtx rng;  // Mode::Eval draws nothing
      rng.seed = t.seed;
      rng.step = uint32_t(updates);
      rng.global_micro = int(m);
      const int32_t* in = inputs_dev_.data();
      const int32_t* tg = targets_dev_.data();
      const MicroStats& st = model16_ ? model16_->forward(access16(), in, tg, select_bias_, rng, Mode::Eval)
                                      : model_->forward(access32(), in, tg, select_bias_, rng, Mode::Eval);
      sums[0] += st.ce_sum;
      sums[1] += aux_loss_value(st, cfg_.model, cfg_.moe.aux_loss_form, nullptr);
      sums[2] += z_loss_value(st);
      sums[3] += double(std::count_if(targets_.begin(), targets_.end(),
                                      [](int32_t x) { return x != kIgnoreTarget; }));  // loss tokens (labels −100 masked)
      for (int l = 0; l < Lm; ++l) {
        for (int x = 0; x < E; ++x) e.expert_load[l][x] += st.router[l].routed[x];
        e.dropped += st.router[l].dropped;
        e.pairs += st.router[l].pairs;
      }
    }
  }
  world_comm_.all_reduce_sum(sums, 4);
  std::vector<int64_t>& counts = stat_counts_;
  counts.clear();
  for (const auto& l : e.expert_load) counts.insert(counts.end(), l.begin(), l.end());
  counts.push_back(e.dropped);
  counts.push_back(e.pairs);
  world_comm_.all_reduce_sum(counts.data(), i64(counts.size()));
  size_t i = 0;
  for (auto& l : e.expert_load)
    for (auto& c : l) c = counts[i++];
  e.dropped = counts[i++];
  e.pairs = counts[i++];
  const double micro = double(eval_batches_) * double(t.grad_accum) * world_;
  e.tokens = i64(sums[3]);
  e.loss = sums[0] / std::max(1.0, sums[3]);
  e.ppl = std::exp(e.loss);
  e.aux_loss = sums[1] / micro;
  e.z_loss = sums[2] / micro;
  e.time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return e;
}

void Trainer::log_eval(const EvalResult& e) const {
  const RouterHealth h = router_health(e.expert_load);
  spdlog::info("eval after step {} | loss {:.4f} | ppl {:.2f} | {} tokens | utilization {:.2f} | imbalance {:.2f} | "
               "drop {:.3f} | {:.1f} s",
               e.step, e.loss, e.ppl, e.tokens, h.expert_utilization, h.load_imbalance,
               e.pairs ? double(e.dropped) / double(e.pairs) : 0.0, e.time_s);
}

std::vector<float> Trainer::gather_full_params() {
  const ParamTable full = build_param_table(cfg_.model, lora_);
  std::vector<float> out(size_t(full.total_numel()), 0.f);
  const ParamTable& local = table();
  const std::vector<float> mine = state_->local_params();
  const int edp_rank = rank_ / ep_;
  // Dense tensors from rank 0, each expert from the first rank of its expert-DP group: the sum is exact.
  for (const ParamInfo& p : local.entries()) {
    if ((p.expert && edp_rank != 0) || (!p.expert && rank_ != 0)) continue;
    const ParamInfo& f = full.at(p.name);
    std::copy(mine.begin() + p.offset, mine.begin() + p.offset + p.numel, out.begin() + f.offset);
  }
  world_comm_.all_reduce_sum(out.data(), i64(out.size()));
  return out;
}

// Adds the eval fields (eval_*) of `e` to a metrics line.
static void add_eval_fields(nlohmann::json& j, const EvalResult& e, bool with_load) {
  const RouterHealth h = router_health(e.expert_load);
  j["eval_loss"] = e.loss;
  j["eval_ppl"] = e.ppl;
  j["eval_tokens"] = e.tokens;
  j["eval_aux_loss"] = e.aux_loss;
  j["eval_z_loss"] = e.z_loss;
  j["eval_expert_utilization"] = h.expert_utilization;
  j["eval_load_imbalance"] = h.load_imbalance;
  j["eval_routing_entropy"] = h.routing_entropy;
  j["eval_dropped_frac"] = e.pairs ? double(e.dropped) / double(e.pairs) : 0.0;
  j["eval_time_s"] = e.time_s;
  if (with_load) j["eval_expert_load"] = e.expert_load;
}

// A JSON number, or null for NaN (a metric not measured, e.g. churn at the first logged step, MFU without a peak).
static nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

// The "router_layers" array of a metrics line: per MoE layer health (LayerRouterHealth).
static nlohmann::json router_layers_json(const std::vector<LayerRouterHealth>& layers) {
  nlohmann::json a = nlohmann::json::array();
  for (const LayerRouterHealth& h : layers)
    a.push_back({{"layer", h.layer},
                 {"aux_loss", h.aux},
                 {"z_loss", h.z},
                 {"expert_utilization", h.utilization},
                 {"load_imbalance", h.imbalance},
                 {"routing_entropy", h.entropy},
                 {"dropped_frac", h.dropped_frac},
                 {"router_logit_norm", h.logit_norm},
                 {"routing_churn", number_or_null(h.churn)}});
  return a;
}

void Trainer::append_metrics(const nlohmann::json& line) {
  metrics_.append(line.dump());
  if (tb_) log_metrics_to_tensorboard(*tb_, line, moe_layer_ids_);
}

void Trainer::write_metrics(const StepResult& r, bool with_load, const EvalResult* eval) {
  const RouterHealth h = router_health(r.expert_load);
  nlohmann::json j;
  j["step"] = r.step;
  j["loss"] = r.loss;
  j["aux_loss"] = r.aux_loss;
  j["z_loss"] = r.z_loss;
  j["lr"] = r.lr;
  j["grad_norm"] = r.grad_norm;
  j["tokens"] = r.tokens;
  j["tok_per_s"] = r.step_time_s > 0 ? double(r.tokens) / r.step_time_s : 0.0;
  j["step_time_s"] = r.step_time_s;
  j["expert_utilization"] = h.expert_utilization;
  j["load_imbalance"] = h.load_imbalance;
  j["routing_entropy"] = h.routing_entropy;
  j["dropped_frac"] = r.pairs ? double(r.dropped) / double(r.pairs) : 0.0;
  j["model_tflops"] = r.model_tflops;
  j["mfu"] = number_or_null(r.mfu);
  if (with_load) {
    j["expert_load"] = r.expert_load;
    j["router_layers"] = router_layers_json(r.router_layers);
  }
  if (eval) add_eval_fields(j, *eval, with_load);
  append_metrics(j);
}

static std::string hms(double sec) {
  const long s = long(sec + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  return buf;
}

void Trainer::run() {
  const auto& t = cfg_.train;
  const fs::path dir = cfg_.resolved_run_dir();
  if (rank_ == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    MT_INPUT_CHECK(!ec, "run.dir: cannot create '", dir.string(), "': ", ec.message());
    if (cfg_.log.tensorboard) {  // first: a run.dir/tb that cannot take event files stops before anything is written
      tb_ = std::make_unique<tb::TbEventWriter>((dir / "tb").string());
      // A resume: TensorBoard drops what an earlier writer logged after the checkpoint (steps > start_step_).
      if (start_step_ > 0) tb_->session_start(start_step_ + 1);
      tb_->flush();
      spdlog::info("TensorBoard events: {} (tensorboard --logdir {})", tb_->path(), (dir / "tb").string());
    }
    write_file_atomic(dir, "config.yaml", config_to_yaml(cfg_));
    metrics_.open((dir / "metrics.jsonl").string(), start_step_);  // a resume keeps steps 1..start_step_ only
  }
  if (rank_ == 0) {
    spdlog::info("training {} params, {} MoE layers, {} rank(s) (ep {} x expert-dp {}), global batch {} x {} tokens, {} steps -> {}",
                 build_param_table(cfg_.model).total_numel(), num_moe_layers(), world_, ep_, world_ / ep_,
                 i64(t.micro_batch) * t.grad_accum * world_, t.seq_len, t.steps, dir.string());
    if (lora_.active()) {
      const ParamTable state = build_param_table(cfg_.model, lora_);
      spdlog::info("{}: r {}, alpha {}, scaling {:.4g}, {} trainable params ({:.3f}% of the model; router {}), base "
                   "weights {} ({} on this rank)",
                   lora_.method == PeftMethod::Qlora ? "QLoRA" : "LoRA", lora_.r, lora_.alpha, lora_.scaling(),
                   state.trainable_numel(),
                   100.0 * double(state.trainable_numel()) / double(build_param_table(cfg_.model).tensor_numel()),
                   lora_.train_router ? "trained" : "frozen",
                   lora_.method == PeftMethod::Qlora ? (cfg_.peft.double_quant ? "NF4 + double quant" : "NF4")
                                                     : (t.precision == Precision::Bf16 ? "bf16" : "fp32"),
                   human_bytes(base_weight_bytes()));
    }
    if (!cfg_.model_init_from.empty() && !cfg_.given.count("moe.aux_loss_coef") && num_moe_layers() > 0)
      spdlog::info("aux loss: moe.aux_loss_coef {} from {}/config.json router_aux_loss_coef{}",
                   cfg_.moe.aux_loss_coef, cfg_.model_init_from,
                   cfg_.moe.aux_loss_form == AuxForm::Hf ? "" : " x top_k (aux_loss_form layer)");
  }
  if (rank_ == 0 && cfg_.log.stability_warnings)
    for (const std::string& w : recipe_advice(cfg_, lora_, world_)) spdlog::warn("{}", w);
  if (rank_ == 0) {  // the MFU denominator (a CPU measures its GEMM now, before step 1)
    std::string source;
    peak_tflops_ = model16_ ? resolve_peak_tflops(cfg_, *backend16_, &source) : resolve_peak_tflops(cfg_, *backend_, &source);
    if (peak_tflops_ > 0)
      spdlog::info("model FLOPs {:.3g} per token (6N + attention, N = {:.3g} active params{}); MFU against {:.4g} "
                   "TFLOP/s per device ({})", flops_.per_token, flops_.active_params,
                   lora_.active() ? "; LoRA: 4N + 6N_lora" : "", peak_tflops_, source);
    else
      spdlog::warn("MFU not reported: no peak for {} (set train.peak_tflops to the device's dense peak)", source);
  }
  RouterHealthWatch health_watch(lora_, cfg_.moe, cfg_.model.num_experts, cfg_.model.top_k);
  bool mfu_warned = false;
  if (cfg_.checkpoint.on_signal) install_stop_handlers();  // no-op when main() installed them at start
  keep_stop_handlers(cfg_.checkpoint.on_signal);
  const auto start = std::chrono::steady_clock::now();
  auto stop_requested = [&] {
    double stop = stop_signal_received() != 0 ? 1.0 : 0.0;
    world_comm_.all_reduce_sum(&stop, 1);
    return stop > 0;
  };
  // A stop signal that came while the model loaded: nothing new to save, leave before the first step.
  if (start_step_ < t.steps && stop_requested()) {
    if (rank_ == 0) spdlog::warn("stop signal before step {}: no progress to save; continue with --resume auto", start_step_ + 1);
    stopped_by_signal_ = true;
    return;
  }
  // eval.at_start: the baseline before the first update, as metrics line "step": 0 (a resumed run has it already).
  if (eval_data_ && cfg_.eval.at_start && start_step_ == 0) {
    const EvalResult& e = evaluate(0);
    if (rank_ == 0) {
      log_eval(e);
      nlohmann::json j;
      j["step"] = 0;
      add_eval_fields(j, e, true);
      append_metrics(j);
    }
  }
  for (int s = start_step_; s < t.steps; ++s) {
    const StepResult& r = step(s);
    steps_done_ = s + 1;
    const bool log_now = (r.step % cfg_.log.every == 0) || r.step == t.steps || r.step == 1;
    const bool eval_now = eval_data_ && ((cfg_.eval.every > 0 && r.step % cfg_.eval.every == 0) || r.step == t.steps);
    const EvalResult* eval = eval_now ? &evaluate(r.step) : nullptr;
    const bool with_layers = r.step % cfg_.log.every == 0 || r.step == t.steps;
    if (rank_ == 0 && !mfu_warned && r.mfu > 1.0) {  // more than the peak: the peak is wrong
      mfu_warned = true;
      spdlog::warn("step {}: MFU {:.3g} > 1: {:.4g} model TFLOP/s per device exceed the peak {:.4g} TFLOP/s; set "
                   "train.peak_tflops to the device's dense peak at train.precision", r.step, r.mfu, r.model_tflops,
                   peak_tflops_);
    }
    if (with_layers) measure_churn(result_);  // collective: every rank logs at the same steps
    if (rank_ == 0) {
      if (eval) log_eval(*eval);
      write_metrics(r, with_layers, eval);
      if (log_now) {
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double eta = el / r.step * (t.steps - r.step);
        spdlog::info("step {:>{}}/{} | loss {:.4f} | aux {:.4f} | z {:.3f} | lr {:.2e} | gnorm {:.3f} | drop {:.3f} | {:.0f} tok/s | ETA {}",
                     r.step, int(std::to_string(t.steps).size()), t.steps, r.loss, r.aux_loss, r.z_loss, r.lr,
                     r.grad_norm, r.pairs ? double(r.dropped) / double(r.pairs) : 0.0,
                     double(r.tokens) / r.step_time_s, hms(eta));
      }
    }
    // Warnings and the collapse stop judge the per-layer values this step's metrics line carries.
    if (rank_ == 0 && with_layers && cfg_.log.stability_warnings && num_moe_layers() > 0)
      for (const std::string& w : health_watch.observe(r.step, r.router_layers)) spdlog::warn("{}", w);
    // Router collapse: the same verdict on every rank (the statistics are reduced), so every rank leaves with exit 3
    // and rank 0 says why; the update is done, nothing is saved.
    if (cfg_.train.stop_on_collapse && with_layers)
      if (const std::string why = collapse_message(r.step, r.router_layers, cfg_.moe, lora_); !why.empty())
        throw AgreedError(ErrorKind::Diverged, rank_ == 0 ? why : std::string());
    // A stop signal on any rank: every rank finishes this step, checkpoints and leaves together.
    if (stop_requested()) {
      const std::string path = save_checkpoint();
      if (rank_ == 0) spdlog::warn("stop signal: checkpoint {} written after step {}; continue with --resume auto", path, r.step);
      stopped_by_signal_ = true;
      return;
    }
    if (cfg_.checkpoint.every > 0 && r.step % cfg_.checkpoint.every == 0 && r.step != t.steps) save_checkpoint();
  }
  if (steps_done_ > start_step_ || start_step_ == 0) save_checkpoint();
  if (cfg_.checkpoint.export_hf && lora_.active()) {
    // LoRA/QLoRA: the adapter (and trained router) as a PEFT adapter directory; the base stays where it came from.
    const std::vector<float> full = gather_full_params();
    if (rank_ == 0) {
      const ParamTable state = build_param_table(cfg_.model, lora_);
      const AdapterSet a = adapter_set_from_state(full.data(), state, cfg_.model, lora_, cfg_.peft);
      write_peft_adapter((dir / "adapter").string(), cfg_.model, a, PeftLayout::Fused, cfg_.model_init_from);
      spdlog::info("exported the adapter to {} (PEFT, transformers 5 layout; moe-export --format peft "
                   "--peft-layout per-expert for transformers 4)", (dir / "adapter").string());
    }
    world_comm_.barrier();
  } else if (cfg_.checkpoint.export_hf) {
    const std::vector<float> full = gather_full_params();
    if (rank_ == 0) {
      const ParamTable table = build_param_table(cfg_.model);
      HfSaveOptions hf;
      hf.meta = hf_export_meta(cfg_);
      save_hf_model((dir / "hf").string(), cfg_.model, table, full.data(), hf);
      spdlog::info("exported the final model to {}", (dir / "hf").string());
    }
    // The ranks leave together: tearing down NCCL (ncclCommFinalize) waits for every rank of a communicator, with
    // MOE_NCCL_TIMEOUT_S, and rank 0's export of a large model can take longer than that; the host barrier has none.
    world_comm_.barrier();
  }
  if (rank_ == 0) spdlog::info("done: {} steps in {}", t.steps - start_step_,
               hms(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()));
  if (rank_ == 0 && cfg_.log.plots) {  // the run's results are saved: a plot failure is a warning, not a failed run
    const std::string why = make_run_plots(cfg_.resolved_run_dir());
    if (why.empty())
      spdlog::info("plots and report in {}/plots (report.md)", cfg_.resolved_run_dir());
    else
      spdlog::warn("log.plots: {}; plot later with launch/moe_plot.py {}", why, cfg_.resolved_run_dir());
  }
}

}  // namespace moe
