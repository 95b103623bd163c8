// Owns the trainer's checkpoint policy (DESIGN §7): file naming, atomic publish, `latest`, pruning, resume and resharding checks.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <unordered_map>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/checksum.h"
#include "train/checkpoint_files.h"
#include "train/run_dir.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace moe {

namespace fs = std::filesystem;


std::vector<std::pair<i64, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<i64, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  static const std::regex re("step_([0-9]{1,18})\\.h5");  // more digits: not ours (and no overflow)
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string n = e.path().filename().string();
    if (std::regex_match(n, m, re)) out.emplace_back(std::stoll(m[1]), e.path());
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.first > b.first; });
  return out;
}

void write_file_atomic(const fs::path& dir, const std::string& name, const std::string& text) {
  const fs::path tmp = dir / (name + ".tmp"), dst = dir / name;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = fd < 0 ? errno : 0;
  for (size_t done = 0; err == 0 && done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) err = n < 0 ? errno : EIO;
    else done += size_t(n);
  }
  if (fd >= 0 && ::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), dst.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    detail::raise(ErrorKind::Internal, __FILE__, __LINE__, "cannot write '", dst.string(), "': ", std::strerror(err),
                  " (errno ", err, "); it is left as it was");
  }
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
  const fs::path dir = checkpoint_dir(cfg_);
  // The directory must still be the one this run locked (not removed, nor recreated by another run).
  run_agreed(world_comm_, [&] {
    const std::string problem = rank_ == 0 && run_dir_claim_ ? run_dir_claim_->checkpoint_dir_problem() : "";
    if (!problem.empty()) detail::raise(ErrorKind::Internal, __FILE__, __LINE__, problem);
    if (rank_ != 0) return;
    std::error_code ec;
    fs::create_directories(dir, ec);
    MT_INPUT_CHECK(!ec, "checkpoint.dir: cannot create '", dir.string(), "': ", ec.message());
  });
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
  const ParamTable full = build_param_table(cfg_.model, lora_);
  for (const ParamInfo& p : full.entries())
    decl.push_back({p.name, p.shape, {0, 0, 0}, p.trainable ? Moments::Stored : Moments::None});
  std::vector<TensorPiece> pieces[3];
  state_->checkpoint_pieces(ParamState::PieceUse::Write, pieces[0], pieces[1], pieces[2]);
  sum_checksums(decl, pieces, world_comm_);
  write_checkpoint_file(tmp.string(), world_comm_, decl, pieces[0], pieces[1], pieces[2], meta);
  state_->release_checkpoint_staging();  // host copy of device state (none on the CPU)
  world_comm_.barrier();
  if (rank_ == 0) {
    // Publish: rename the complete file, then move `latest`, then prune older ones. A failure stops the run
    // (the caller aborts the world) and leaves `latest` and older checkpoints as they were.
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      detail::raise(ErrorKind::Internal, __FILE__, __LINE__, "checkpoint publish failed: cannot rename '", tmp.string(),
                    "' to '", final_path.string(), "': ", std::strerror(err), " (errno ", err, ")");
    }
    write_file_atomic(dir, "latest", name + "\n");
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

// contract: C7.resume_batch. Settings that keep the checkpoint's global batch B = micro_batch x grad_accum x
// ranks with micro_batch and seq_len unchanged (the three things load_checkpoint requires), as `--set` options:
// for this rank count when one exists, else the rank counts (multiples of parallel.ep) that divide the
// checkpoint's micro-batches per step, each with its grad_accum.
static std::string batch_advice(int mb_old, int seq_old, i64 B_old, const TrainConfig& now, int world, int ep) {
  std::string keep;
  if (now.seq_len != seq_old) keep += " --set train.seq_len=" + std::to_string(seq_old);
  if (now.micro_batch != mb_old) keep += " --set train.micro_batch=" + std::to_string(mb_old);
  const i64 M = B_old / std::max(1, mb_old);  // micro-batches per step over all ranks
  if (M % world == 0) return "keep it with" + keep + " --set train.grad_accum=" + std::to_string(M / world);
  std::vector<std::string> alt;
  for (i64 R = 1; R <= M && alt.size() < 8; ++R)
    if (M % R == 0 && R % ep == 0)
      alt.push_back("on " + std::to_string(R) + (R == 1 ? " rank" : " ranks") + " with" + keep +
                    " --set train.grad_accum=" + std::to_string(M / R));
  std::string msg = "no train.grad_accum keeps it on " + std::to_string(world) + " ranks (" + std::to_string(M) +
                    " micro-batches of " + std::to_string(mb_old) + " per step must split evenly over the ranks)";
  if (alt.empty()) return msg + " and no rank count that parallel.ep = " + std::to_string(ep) + " allows divides " +
                          std::to_string(M) + "; start a new run instead";
  msg += "; run";
  for (size_t i = 0; i < alt.size(); ++i) msg += (i == 0 ? " " : i + 1 == alt.size() ? ", or " : ", ") + alt[i];
  return msg;
}

void Trainer::resume(const std::string& what) {
  const fs::path dir = checkpoint_dir(cfg_);
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
  // The config passed the /meta checksum: one this build cannot parse comes from another version (stop, exit 2).
  const Config old = parse_config(meta.config_yaml, {}, path + ":/meta/config");
  {
    // Values that contradict their own config mean a damaged /meta: skipped under auto.
    const __int128 B = __int128(old.train.micro_batch) * old.train.grad_accum * meta.world;
    if (__int128(meta.data_position) != meta.step * B || __int128(meta.tokens_seen) != __int128(meta.data_position) * old.train.seq_len)
      return "damaged /meta: data_position " + std::to_string(meta.data_position) + " and tokens_seen " +
             std::to_string(meta.tokens_seen) + " are not step x global batch (" + std::to_string(meta.step) + " x " +
             std::to_string(i64(B)) + ") and that x seq_len " + std::to_string(old.train.seq_len);
    if (old.parallel.ep != meta.ep || old.parallel.zero != meta.zero)
      return "damaged /meta: layout ep " + std::to_string(meta.ep) + ", zero " + std::to_string(meta.zero) +
             " differs from its config's";
  }
  const auto changed = shape_changes(old.model, cfg_.model);
  if (!changed.empty()) {
    std::string keys;
    for (const auto& k : changed) keys += (keys.empty() ? "" : ", ") + k;
    MT_INPUT_FAIL("--resume ", path, ": the model shape differs from the checkpoint's (", keys,
                  "); resume with the checkpoint's model or start a new run");
  }
  if (!meta.select_bias.empty()) {
    bool fits = meta.select_bias.size() == select_bias_.size();
    for (size_t l = 0; fits && l < select_bias_.size(); ++l) fits = meta.select_bias[l].size() == select_bias_[l].size();
    if (!fits) return "damaged /meta: select_bias has another shape than this model's [MoE layers, experts]";
  }
  const i64 B_old = i64(old.train.micro_batch) * old.train.grad_accum * meta.world;
  const i64 B_now = i64(cfg_.train.micro_batch) * cfg_.train.grad_accum * world_;
  MT_INPUT_CHECK(old.train.micro_batch == cfg_.train.micro_batch && B_old == B_now && old.train.seq_len == cfg_.train.seq_len,
                 "--resume ", path, ": the global batch must stay fixed (checkpoint: micro_batch ", old.train.micro_batch,
                 " x ", B_old / old.train.micro_batch, " micro-batches, seq_len ", old.train.seq_len, "; now: micro_batch ",
                 cfg_.train.micro_batch, " x ", B_now / cfg_.train.micro_batch, ", seq_len ", cfg_.train.seq_len,
                 "); ", batch_advice(old.train.micro_batch, old.train.seq_len, B_old, cfg_.train, world_, ep_));
  MT_INPUT_CHECK(meta.step <= cfg_.train.steps, "--resume ", path, ": checkpoint is at step ", meta.step,
                 " beyond train.steps = ", cfg_.train.steps);
  std::vector<TensorDecl> decl;
  const ParamTable full = build_param_table(cfg_.model, lora_);
  for (const ParamInfo& p : full.entries())
    decl.push_back({p.name, p.shape, {0, 0, 0}, p.trainable ? Moments::Stored : Moments::None});
  std::vector<TensorPiece> pm, pa, pv;
  state_->checkpoint_pieces(ParamState::PieceUse::Read, pm, pa, pv);
  std::string problem = read_checkpoint_tensors(path, world_comm_, decl, pm, pa, pv);
  if (!problem.empty()) {
    state_->release_checkpoint_staging();
    return problem;
  }
  state_->after_load();  // uploads the pieces into the backend's memory where they were staged
  // Recompute the checksums over what was read (each element once across the ranks) and compare.
  std::vector<TensorDecl> check = decl;
  std::vector<TensorPiece> pieces[3];
  state_->checkpoint_pieces(ParamState::PieceUse::Write, pieces[0], pieces[1], pieces[2]);
  sum_checksums(check, pieces, world_comm_);
  state_->release_checkpoint_staging();
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
    // Anything the command line changed against the checkpoint's config is applied: say what, key by key.
    for (const std::string& change : config_changes(old, cfg_)) spdlog::info("resume changes {}", change);
  }
  return "";
}

}  // namespace moe
