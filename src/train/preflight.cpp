// Owns the pre-allocation checks of a run and the --dry-run report (see preflight.h).
#include "train/preflight.h"

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "backend/backend.h"
#include "comm/communicator.h"
#include "core/error.h"
#include "data/token_data.h"
#include "launch/launch_env.h"
#include "peft/lora.h"
#include "train/data_tokenize.h"
#include "train/run_plots.h"
#include "train/trainer.h"

namespace moe {

// DESIGN §6: a key that is parsed must work or be refused with exit 2, never be ignored.
std::vector<std::string> unsupported_options(const Config& c) {
  std::vector<std::string> out;
  if (const std::string why = backend_unavailable(c.train.device); !why.empty()) out.push_back(why);
  if (c.train.device == Device::Cuda) {
    // The CUDA path's environment settings: the NCCL timeout and the attention path.
    auto refused = [&](auto read_setting) {
      try {
        (void)read_setting();
      } catch (const Error& e) {
        out.push_back(e.what());
      }
    };
    refused(nccl_timeout_s);
    refused(cudnn_attention_setting);
  }
  // parallel.backend auto: NCCL moves the data of train.device: cuda, MPI that of cpu (control traffic: MPI).
  if (c.parallel.backend == CommBackend::Nccl && c.train.device != Device::Cuda)
    out.push_back("parallel.backend: nccl moves GPU memory and needs train.device: cuda; use auto or mpi");
  if (c.parallel.backend == CommBackend::Mpi && c.train.device == Device::Cuda)
    out.push_back("parallel.backend: mpi cannot move GPU memory (train.device: cuda trains over NCCL); use auto or nccl");
  if (c.peft.method != PeftMethod::Full) {
    try {
      (void)resolve_lora_spec(c.peft, c.model);  // targets: unknown names, the router, dense-MLP layers
    } catch (const Error& e) {
      out.push_back(e.what());
    }
    if (c.moe.expert_dropout > 0)
      out.push_back("moe.expert_dropout > 0 with peft.method: lora/qlora is not implemented yet; set moe.expert_dropout: 0");
  } else {
    if (!c.model_adapter_from.empty())
      out.push_back("model.adapter_from: an adapter needs peft.method: lora or qlora");
  }
  if (c.peft.double_quant && c.peft.method != PeftMethod::Qlora)
    out.push_back("peft.double_quant: true quantizes QLoRA base weights and needs peft.method: qlora");
  if (c.data.reset_attention && c.train.device == Device::Cuda)
    out.push_back("data.reset_attention: true is not implemented yet on train.device: cuda (the CPU runs it); remove it");
  if (!c.data.chat_template.empty() && c.data.format != DataFormat::Jsonl)
    out.push_back("data.chat_template applies to data.format: jsonl (chats and Q&A pairs moe-train tokenizes); token "
                  "data was rendered when it was built (moe-prep build --chat-template); remove it");
  else if (!c.data.chat_template.empty() && c.data.chat_template != "auto" && c.data.chat_template != "mixtral" &&
           c.data.chat_template != "chatml" && c.data.chat_template != "chatml-plain" && c.data.chat_template != "none")
    out.push_back("data.chat_template: '" + c.data.chat_template + "' is not one of auto, mixtral, chatml, chatml-plain, none");
  if (c.log.plots)
    if (const std::string why = run_plots_problem(); !why.empty()) out.push_back(why);
  if (c.log.tensorboard) {  // run.dir/tb must be (or become) a directory
    std::error_code ec;
    const std::filesystem::path tb = std::filesystem::path(c.resolved_run_dir()) / "tb";
    if (std::filesystem::exists(tb, ec) && !std::filesystem::is_directory(tb, ec))
      out.push_back("log.tensorboard: '" + tb.string() + "' exists and is not a directory (event files go there); "
                    "remove it or set run.dir");
  }
  return out;
}

static std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

// What one rank keeps on its GPU under train.device: cuda: ParamState's buffers and the activation arena.
static i64 gpu_plan_bytes(const MemoryPlan& m) { return m.state() + m.working_bytes + m.activation_bytes; }

static bool memory_check_off() {
  const char* v = std::getenv("MOE_MEMORY_CHECK");
  return v && (std::string(v) == "off" || std::string(v) == "0");
}

Preflight preflight(const Config& in, int world, PreflightMode mode) {
  Preflight p;
  const bool dry = mode == PreflightMode::DryRun;
  // A problem that leaves the plan possible: thrown in a real run, collected by a dry run.
  auto attempt = [&](auto&& check) {
    if (!dry) return check();
    try {
      check();
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::BadInput) throw;
      p.problems.push_back(e.what());
    }
  };
  p.cfg = resolve_model_config(in);
  const Config& c = p.cfg;
  MT_INPUT_CHECK(world % c.parallel.ep == 0, "parallel.ep = ", c.parallel.ep, " must divide the number of ranks ", world,
                 " (world = ep x expert_dp)");
  MT_INPUT_CHECK(c.model.num_experts % c.parallel.ep == 0, "parallel.ep = ", c.parallel.ep,
                 " must divide model.num_experts = ", c.model.num_experts, " (experts are split evenly over the EP group)");
  if (dry)
    for (const std::string& why : unsupported_options(c)) p.problems.push_back(why);
  else
    check_supported(c);
  const bool raw = data_needs_tokenizing(c.data);  // tokenized at start-up (train/data_tokenize.h): files checked
  attempt([&] {
    if (raw)
      check_raw_sources(c.data, c.eval.data);
    else
      p.data_tokens = check_data_sources(c.data, c.model.vocab_size, c.train.seq_len, dry ? DataScan::Ids : DataScan::Size);
  });
  i64 eval_tokens = 0;
  if (!c.eval.data.empty() && !raw)
    attempt([&] {
      eval_tokens = check_token_file(c.data, c.eval.data, c.model.vocab_size, c.train.seq_len,
                                     dry ? DataScan::Ids : DataScan::Size, "eval.data");
      const i64 B = i64(c.train.micro_batch) * c.train.grad_accum * world;
      const i64 windows = (eval_tokens - 1) / c.train.seq_len;
      MT_INPUT_CHECK(windows >= B, "eval.data '", c.eval.data, "': ", windows, " windows of train.seq_len + 1 = ",
                     c.train.seq_len + 1, " tokens, fewer than one global batch (", B,
                     " = micro_batch x grad_accum x ranks); give more held-out data");
    });
  p.plan = plan_memory(c, world, std::max<i64>(p.data_tokens, 0) + eval_tokens);
  p.local_ranks = std::max(1, detect_launch_env().local_size);

  // Host memory: every rank of this job on this machine holds its own plan.
  p.host = host_memory();
  // train.device: cuda: the host keeps the tokens, the start-up staging and, while a checkpoint is written or
  // read, a host copy of the rank's weights and moments (ParamState's checkpoint staging; at most this much).
  const i64 host_per_rank = c.train.device == Device::Cuda
                                ? p.plan.total() - gpu_plan_bytes(p.plan) + p.plan.weight_bytes + p.plan.optim_bytes
                                : p.plan.total();
  const i64 need = host_per_rank * p.local_ranks;
  if (p.host.available >= 0 && need > p.host.available) {
    std::ostringstream w;
    w << "the plan needs " << human_bytes(need) << " of host memory";
    if (p.local_ranks > 1) w << " (" << p.local_ranks << " ranks on this machine x " << human_bytes(host_per_rank) << ")";
    w << " but this machine has " << human_bytes(p.host.available) << " available (" << p.host.source
      << "); use more ranks (ZeRO-3 and parallel.ep shard the state), a smaller train.micro_batch, or more machines";
    p.warnings.push_back(w.str());
  }
  // GPU memory, asked for only when the run would train there: weights, gradients, moments, activations.
  if (c.train.device == Device::Cuda) {
    p.gpu = gpu_memory(detect_launch_env().local_rank);
    // A real run needs a GPU here; a dry run may plan for other machines (it reports the GPU as unknown).
    if (!dry && backend_unavailable(Device::Cuda).empty())
      MT_INPUT_CHECK(p.gpu.devices > 0, "train.device: cuda: no GPU is visible to this process (",
                     p.gpu.unknown_why, "); check CUDA_VISIBLE_DEVICES and that the job asked for GPUs, or use "
                     "train.device: cpu");
    const i64 on_gpu = gpu_plan_bytes(p.plan);
    const i64 cap = p.gpu.free >= 0 ? p.gpu.free : p.gpu.total;
    if (cap >= 0 && on_gpu > cap)
      p.warnings.push_back("the per-rank GPU plan (" + human_bytes(on_gpu) + ") exceeds the " +
                           (p.gpu.free >= 0 ? "free" : "total") + " memory of " + p.gpu.name + " (" + human_bytes(cap) + ")");
  }
  if (!dry && !p.warnings.empty() && !memory_check_off())
    MT_INPUT_FAIL("this run does not fit in memory: ", join(p.warnings, "; "), ". Nothing was allocated. The plan:\n",
                  format_memory_plan(c, p.plan), "(MOE_MEMORY_CHECK=off skips this check)");
  return p;
}

std::string format_preflight(const Preflight& p) {
  std::ostringstream os;
  os << format_memory_plan(p.cfg, p.plan);
  if (p.cfg.train.device == Device::Cuda) {
    // contract: §6 dry-run. One rank per GPU: the rank's state, working buffers and activations live on its GPU.
    os << "per GPU (one rank each): " << human_bytes(gpu_plan_bytes(p.plan)) << " (state "
       << human_bytes(p.plan.state()) << " + working " << human_bytes(p.plan.working_bytes) << " + activations "
       << human_bytes(p.plan.activation_bytes) << ")\n";
  }
  if (p.host.available >= 0)
    os << "this machine: " << human_bytes(p.host.available) << " available (" << p.host.source << "), "
       << p.local_ranks << " rank(s) of this job on it\n";
  else
    os << "this machine: available memory unknown (no MemAvailable in /proc/meminfo)\n";
  if (p.cfg.train.device == Device::Cuda) {
    if (p.gpu.total >= 0)
      os << "GPU: " << p.gpu.name << ", " << human_bytes(p.gpu.total) << " total"
         << (p.gpu.free >= 0 ? ", " + human_bytes(p.gpu.free) + " free" : std::string()) << " (" << p.gpu.devices
         << " visible)\n";
    else
      os << "GPU memory: unknown (" << p.gpu.unknown_why << "); the plan is not checked against train.device: cuda\n";
  }
  for (const std::string& w : p.warnings) os << "warning: " << w << "\n";
  if (p.problems.empty() && !p.warnings.empty() && !memory_check_off()) {
    // Warned, not refused: the plan may be meant for other machines (--world N on a login node).
    os << "checks passed except memory: on this machine a real run would stop on the warning above (exit 2; "
          "MOE_MEMORY_CHECK=off skips it); on machines with enough memory it starts\n";
  } else if (p.problems.empty() && p.cfg.train.device == Device::Cuda && p.gpu.devices == 0) {
    // Planned for GPU machines from one without a GPU (a login node): say what a run here would do.
    os << "checks passed except the GPU: a real run with this config and world size starts on machines whose "
          "GPUs it sees; here it would stop (exit 2: no GPU is visible)\n";
  } else if (p.problems.empty()) {
    os << "checks passed: a real run with this config and world size starts\n";
  } else {
    os << "a real run would stop (exit 2):\n";
    for (const std::string& x : p.problems) os << "  - " << x << "\n";
  }
  return os.str();
}

}  // namespace moe
