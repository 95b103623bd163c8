// Owns the trainer's checkpoint policy (DESIGN §7): file naming, atomic publish, `latest`, pruning, resume and resharding checks.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <unordered_map>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/checksum.h"
#include "train/checkpoint_files.h"
#include "train/trainer.h"

namespace moe {

namespace fs = std::filesystem;

std::string Trainer::checkpoint_dir() const {
  return cfg_.checkpoint.dir.empty() ? (fs::path(cfg_.resolved_run_dir()) / "checkpoints").string() : cfg_.checkpoint.dir;
}

std::vector<std::pair<i64, fs::path>> list_checkpoints(const fs::path& dir) {
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

// Per-tensor checksums of this rank's write partition, summed over the world (each element counted once).
static void sum_checksums(std::vector<TensorDecl>& decl, const std::vector<TensorPiece>* pieces, Communicator& world) {
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < decl.size(); ++i) index[decl[i].name] = i;
  std::vector<int64_t> sums(3 * decl.size(), 0);
  for (int k = 0; k < 3; ++k)
    for (const TensorPiece& p : pieces[k]) {
      const uint64_t h = piece_checksum(p.data, p.begin, p.end);
      uint64_t& slot = reinterpret_cast<uint64_t&>(sums[3 * index.at(p.name) + k]);
      slot += h;
    }
  world.all_reduce_sum(sums.data(), i64(sums.size()));  // two's-complement addition: the same as mod 2^64
  for (size_t i = 0; i < decl.size(); ++i)
    for (int k = 0; k < 3; ++k) decl[i].checksum[k] = uint64_t(sums[3 * i + k]);
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
  std::vector<TensorPiece> pieces[3];
  state_->checkpoint_pieces(ParamState::PieceUse::Write, pieces[0], pieces[1], pieces[2]);
  sum_checksums(decl, pieces, world_comm_);
  write_checkpoint_file(tmp.string(), world_comm_, decl, pieces[0], pieces[1], pieces[2], meta);
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
  // Rank 0 lists the candidates (complete files, newest first); every rank then tries them in the same order.
  std::string list;
  if (rank_ == 0) {
    std::vector<std::string> c;
    if (what == "auto") {
      // Newest step first. `latest` is not trusted alone: a kill between publishing a file and moving
      // `latest` leaves it one checkpoint behind.
      for (const auto& e : list_checkpoints(dir)) c.push_back(e.second.string());
    } else {
      c.push_back(what);
    }
    for (const auto& p : c) list += p + "\n";
  }
  std::vector<double> len(1, double(list.size()));
  world_comm_.broadcast(len.data(), 1, CommDtype::F64, 0);
  list.resize(size_t(len[0]));
  if (!list.empty()) world_comm_.broadcast(list.data(), i64(list.size()), CommDtype::U8, 0);
  std::vector<std::string> candidates;
  for (size_t a = 0, b; (b = list.find('\n', a)) != std::string::npos; a = b + 1) candidates.push_back(list.substr(a, b - a));

  for (const std::string& path : candidates) {
    // A damaged file is skipped under auto; a file that does not fit this run (model shape, batch) stops it.
    const std::string problem = load_checkpoint(path);
    if (problem.empty()) return;
    MT_INPUT_CHECK(what == "auto", "--resume ", path, ": not a usable checkpoint: ", problem);
    if (rank_ == 0) spdlog::warn("skipping checkpoint {}: {}", path, problem);
  }
  if (what != "auto") MT_INPUT_FAIL("--resume: no checkpoint given");
  // Nothing usable: a failed attempt may have overwritten the state, so initialise it again.
  init_params();
  start_step_ = steps_done_ = 0;
  if (rank_ == 0) spdlog::info("--resume auto: no usable checkpoint in {}, starting from step 0", dir.string());
}

std::string Trainer::load_checkpoint(const std::string& path) {
  CheckpointMeta meta;
  try {
    meta = read_checkpoint_meta(path);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::BadInput) throw;
    return e.what();
  }
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
  MT_INPUT_CHECK(meta.step <= cfg_.train.steps, "--resume ", path, ": checkpoint is at step ", meta.step,
                 " beyond train.steps = ", cfg_.train.steps);
  std::vector<TensorDecl> decl;
  const ParamTable full = build_param_table(cfg_.model);
  for (const ParamInfo& p : full.entries()) decl.push_back({p.name, p.shape});
  std::vector<TensorPiece> pm, pa, pv;
  state_->checkpoint_pieces(ParamState::PieceUse::Read, pm, pa, pv);
  std::string problem = read_checkpoint_tensors(path, world_comm_, decl, pm, pa, pv);
  if (!problem.empty()) return problem;
  state_->after_load();
  // Recompute the checksums over what was read (each element once across the ranks) and compare.
  std::vector<TensorDecl> check = decl;
  std::vector<TensorPiece> pieces[3];
  state_->checkpoint_pieces(ParamState::PieceUse::Write, pieces[0], pieces[1], pieces[2]);
  sum_checksums(check, pieces, world_comm_);
  static const char* kind[3] = {"", "exp_avg of ", "exp_avg_sq of "};
  for (size_t i = 0; i < decl.size(); ++i)
    for (int k = 0; k < 3; ++k)
      if (check[i].checksum[k] != decl[i].checksum[k])
        return std::string(kind[k]) + decl[i].name + " fails its checksum (the file is corrupt)";
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
  return "";
}

}  // namespace moe
