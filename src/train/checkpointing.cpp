// Owns the trainer's checkpoint policy (DESIGN §7): file naming, atomic publish, `latest`, pruning, resume and resharding checks.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include "core/error.h"
#include "io/checkpoint.h"
#include "train/trainer.h"

namespace moe {

namespace fs = std::filesystem;

std::string Trainer::checkpoint_dir() const {
  return cfg_.checkpoint.dir.empty() ? (fs::path(cfg_.resolved_run_dir()) / "checkpoints").string() : cfg_.checkpoint.dir;
}

static std::vector<std::pair<i64, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<i64, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  static const std::regex re("step_([0-9]+)\\.h5");
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string n = e.path().filename().string();
    if (std::regex_match(n, m, re)) out.emplace_back(std::stoll(m[1]), e.path());
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.first > b.first; });
  return out;
}

std::string Trainer::save_checkpoint() {
  const fs::path dir = checkpoint_dir();
  if (rank_ == 0) fs::create_directories(dir);
  world_comm_.barrier();
  const std::string name = "step_" + std::to_string(steps_done_) + ".h5";
  const fs::path final_path = dir / name, tmp = dir / ("." + name + ".tmp");
  CheckpointMeta meta;
  meta.step = steps_done_;
  const i64 B = i64(cfg_.train.micro_batch) * cfg_.train.grad_accum * world_;
  meta.tokens_seen = i64(steps_done_) * B * cfg_.train.seq_len;
  meta.data_position = i64(steps_done_) * B;
  meta.config_yaml = config_to_yaml(cfg_);
  meta.world = world_;
  meta.ep = ep_;
  meta.zero = cfg_.parallel.zero;
  meta.seed = cfg_.train.seed;
  meta.select_bias = select_bias_;
  std::vector<TensorDecl> decl;
  const ParamTable full = build_param_table(cfg_.model);
  for (const ParamInfo& p : full.entries()) decl.push_back({p.name, p.shape});
  std::vector<TensorPiece> pm, pa, pv;
  state_->checkpoint_pieces(ParamState::PieceUse::Write, pm, pa, pv);
  write_checkpoint_file(tmp.string(), world_comm_, decl, pm, pa, pv, meta);
  world_comm_.barrier();
  if (rank_ == 0) {
    // Publish: rename the complete file, then move `latest`, then prune older ones.
    fs::rename(tmp, final_path);
    {
      std::ofstream l(dir / "latest.tmp");
      l << name << "\n";
    }
    fs::rename(dir / "latest.tmp", dir / "latest");
    const auto all = list_checkpoints(dir);
    for (size_t i = size_t(cfg_.checkpoint.keep); i < all.size(); ++i) fs::remove(all[i].second);
    // Temporaries left by runs killed mid-write are never read; drop them once a newer file is complete.
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.size() > 4 && n[0] == '.' && n.compare(n.size() - 4, 4, ".tmp") == 0) fs::remove(e.path(), ec);
    }
    spdlog::info("checkpoint {} written", final_path.string());
  }
  world_comm_.barrier();
  return final_path.string();
}

// Keys whose change makes a checkpoint unusable: the model's shape.
static std::vector<std::string> shape_changes(const ModelConfig& a, const ModelConfig& b) {
  std::vector<std::string> d;
  auto chk = [&](bool same, const char* key) {
    if (!same) d.push_back(key);
  };
  chk(a.arch == b.arch, "model.arch");
  chk(a.vocab_size == b.vocab_size, "model.vocab_size");
  chk(a.hidden_size == b.hidden_size, "model.hidden_size");
  chk(a.intermediate_size == b.intermediate_size, "model.intermediate_size");
  chk(a.expert_width() == b.expert_width(), "model.moe_intermediate_size");
  chk(a.num_layers == b.num_layers, "model.num_layers");
  chk(a.num_heads == b.num_heads, "model.num_heads");
  chk(a.num_kv_heads == b.num_kv_heads, "model.num_kv_heads");
  chk(a.resolved_head_dim() == b.resolved_head_dim(), "model.head_dim");
  chk(a.num_experts == b.num_experts, "model.num_experts");
  chk(a.tie_word_embeddings == b.tie_word_embeddings, "model.tie_word_embeddings");
  chk(a.mlp_only_layers == b.mlp_only_layers && a.decoder_sparse_step == b.decoder_sparse_step, "model.mlp_only_layers");
  return d;
}

void Trainer::resume(const std::string& what) {
  const fs::path dir = checkpoint_dir();
  std::string path;
  // Rank 0 picks and verifies; every rank then reads the same file.
  std::vector<double> found(1, 0.0);
  std::string reason;
  if (rank_ == 0) {
    if (what == "auto") {
      std::vector<fs::path> candidates;
      std::ifstream l(dir / "latest");
      std::string name;
      if (l >> name) candidates.push_back(dir / name);
      for (const auto& c : list_checkpoints(dir)) candidates.push_back(c.second);
      for (const auto& c : candidates) {
        const std::string why = verify_checkpoint(c.string());
        if (why.empty()) {
          path = c.string();
          break;
        }
        spdlog::warn("skipping checkpoint {}: {}", c.string(), why);
      }
    } else {
      reason = verify_checkpoint(what);
      if (reason.empty()) path = what;
    }
    found[0] = path.empty() ? 0.0 : double(path.size());
  }
  world_comm_.broadcast(found.data(), 1, CommDtype::F64, 0);
  const size_t len = size_t(found[0]);
  if (len == 0) {
    if (what != "auto") {
      // Every rank reports the same failure (exit 2) without waiting on another.
      MT_INPUT_FAIL("--resume ", what, ": not a usable checkpoint", rank_ == 0 ? ": " + reason : std::string());
    }
    if (rank_ == 0) spdlog::info("--resume auto: no complete checkpoint in {}, starting from step 0", dir.string());
    return;
  }
  path.resize(len);
  world_comm_.broadcast(path.data(), i64(len), CommDtype::U8, 0);

  const CheckpointMeta meta = read_checkpoint_meta(path);
  const Config old = parse_config(meta.config_yaml, {}, path + ":/meta/config");
  const auto changed = shape_changes(old.model, cfg_.model);
  if (!changed.empty()) {
    std::string keys;
    for (const auto& k : changed) keys += (keys.empty() ? "" : ", ") + k;
    MT_INPUT_FAIL("--resume ", path, ": the model shape differs from the checkpoint's (", keys,
                  "); resume with the checkpoint's model or start a new run");
  }
  const i64 B_old = i64(old.train.micro_batch) * old.train.grad_accum * meta.world;
  const i64 B_now = i64(cfg_.train.micro_batch) * cfg_.train.grad_accum * world_;
  MT_INPUT_CHECK(old.train.micro_batch == cfg_.train.micro_batch && B_old == B_now && old.train.seq_len == cfg_.train.seq_len,
                 "--resume ", path, ": the global batch must stay fixed (checkpoint: micro_batch ", old.train.micro_batch,
                 " x ", B_old / old.train.micro_batch, " micro-batches, seq_len ", old.train.seq_len, "; now: micro_batch ",
                 cfg_.train.micro_batch, " x ", B_now / cfg_.train.micro_batch, ", seq_len ", cfg_.train.seq_len,
                 "); set train.grad_accum = ", B_old / std::max<i64>(1, i64(cfg_.train.micro_batch) * world_));
  MT_INPUT_CHECK(meta.step < cfg_.train.steps || meta.step == cfg_.train.steps, "--resume ", path, ": checkpoint is at step ",
                 meta.step, " beyond train.steps = ", cfg_.train.steps);
  std::vector<TensorDecl> decl;
  const ParamTable full = build_param_table(cfg_.model);
  for (const ParamInfo& p : full.entries()) decl.push_back({p.name, p.shape});
  std::vector<TensorPiece> pm, pa, pv;
  state_->checkpoint_pieces(ParamState::PieceUse::Read, pm, pa, pv);
  read_checkpoint_tensors(path, world_comm_, decl, pm, pa, pv);
  state_->after_load();
  if (!meta.select_bias.empty()) select_bias_ = meta.select_bias;
  start_step_ = steps_done_ = int(meta.step);
  if (rank_ == 0) {
    spdlog::info("resumed from {} at step {} (written by {} rank(s), ep {}, ZeRO-{}; now {} rank(s), ep {}, ZeRO-{})", path,
                 meta.step, meta.world, meta.ep, meta.zero, world_, ep_, cfg_.parallel.zero);
    if (old.train.steps != cfg_.train.steps || old.train.lr != cfg_.train.lr || old.train.warmup_steps != cfg_.train.warmup_steps ||
        old.train.min_lr != cfg_.train.min_lr)
      spdlog::info("resume applies the new schedule: steps {} -> {}, lr {} -> {}, warmup {} -> {}, min_lr {} -> {}",
                   old.train.steps, cfg_.train.steps, old.train.lr, cfg_.train.lr, old.train.warmup_steps,
                   cfg_.train.warmup_steps, old.train.min_lr, cfg_.train.min_lr);
  }
}

}  // namespace moe
