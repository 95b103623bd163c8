// Owns the device-seam tests on the CPU: the Trainer and ParamState on the guarded backend (CPU ops, memory that host code cannot touch) give bitwise the CPU backend's results, and no host code reads or writes backend memory directly.
#include <gtest/gtest.h>

#include <cstring>
#include <exception>
#include <filesystem>

#include "config/config.h"
#include "guarded_backend.h"
#include "model/param_table.h"
#include "parallel/zero.h"
#include "test_util.h"
#include "train/trainer.h"

using namespace moe;
using moe::test::GuardedComm;
using moe::test::MemoryGuard;
using moe::test::TmpDir;
namespace fs = std::filesystem;

namespace {

std::string config_text(const fs::path& dir, const fs::path& run) {
  const std::string data = moe::test::random_token_file(dir);
  return "run: {dir: " + run.string() + "}\n"
         "model: {arch: qwen3_moe, vocab_size: 64, hidden_size: 32, intermediate_size: 48, moe_intermediate_size: 24,\n"
         "        num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 8, num_experts: 4, top_k: 2, init_std: 0.2,\n"
         "        tie_word_embeddings: true}\n"
         "moe: {capacity_factor: 1.25, aux_loss_coef: 0.05, z_loss_coef: 0.01, router_jitter: 0.05,\n"
         "      expert_dropout: 0.1, bias_update_rate: 0.01}\n"
         "train: {seq_len: 8, micro_batch: 2, grad_accum: 2, steps: 3, lr: 0.01, warmup_steps: 2, weight_decay: 0.1}\n"
         "checkpoint: {keep: 2}\n"
         "log: {every: 100}\n"
         "data: {format: tokens, path: " + data + "}\n";
}

// The guarded backend and a guarded data world over the host world: what train.device: cuda wires, on the CPU.
TrainerDevice guarded_device() {
  TrainerDevice d;
  d.make_fp32 = [] { return moe::test::make_guarded_backend<float>(); };
  d.make_bf16 = [] { return moe::test::make_guarded_backend<bf16>(); };
  d.make_data_world = [](Communicator& host) -> std::unique_ptr<Communicator> {
    return std::make_unique<GuardedComm>(host.split(0, host.rank()));
  };
  return d;
}

struct Trace {
  std::vector<StepResult> steps;
  std::vector<float> weights;  // the full model after the last step
};

Trace run_steps(Trainer& tr, int from, int to) {
  Trace t;
  for (int s = from; s < to; ++s) t.steps.push_back(tr.step(s));
  t.weights = tr.gather_full_params();
  return t;
}

bool bitwise(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void expect_same(const Trace& dev, const Trace& cpu, size_t first_cpu_step, const std::string& what) {
  ASSERT_LE(dev.steps.size() + first_cpu_step, cpu.steps.size()) << what;
  for (size_t i = 0; i < dev.steps.size(); ++i) {
    const StepResult &a = dev.steps[i], &b = cpu.steps[first_cpu_step + i];
    EXPECT_EQ(a.step, b.step) << what;
    EXPECT_EQ(a.loss, b.loss) << what << " step " << a.step;
    EXPECT_EQ(a.grad_norm, b.grad_norm) << what << " step " << a.step;
    EXPECT_EQ(a.aux_loss, b.aux_loss) << what << " step " << a.step;
    EXPECT_EQ(a.z_loss, b.z_loss) << what << " step " << a.step;
    EXPECT_EQ(a.expert_load, b.expert_load) << what << " step " << a.step;
    EXPECT_EQ(a.dropped, b.dropped) << what << " step " << a.step;
  }
  EXPECT_TRUE(bitwise(dev.weights, cpu.weights)) << what << ": weights differ";
}

}  // namespace

// The guard itself: guarded memory is unreadable from host code outside an op (the property every other test
// here relies on), and readable through MemOps.
TEST(DeviceSeam, GuardTrapsHostAccess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  moe::test::GuardedMemOps mem;
  float* p = static_cast<float*>(mem.alloc(64, "probe"));
  const float v = 3.5f;
  mem.to_backend(p + 1, &v, sizeof v);
  float back = 0;
  mem.to_host(&back, p + 1, sizeof back);
  EXPECT_EQ(back, 3.5f);
  EXPECT_DEATH({ std::printf("%f\n", double(static_cast<volatile float*>(p)[1])); }, "");
  mem.free(p);
}

// contract: the device seam (train.device: cuda's memory discipline). Every layout the Trainer has — fp32 and bf16,
// ZeRO 0..3, capacity and dropless, grad_accum 2, tied embeddings (two gradient slots), recompute none/selective/
// full, the global aux-loss pre-pass — on the guarded backend:
// losses, gradient norms, router statistics and weights bitwise those of the CPU backend.
TEST(DeviceSeam, TrainerBitwiseOnGuardedBackend) {
  TmpDir d;
  const std::string yaml = config_text(d.path(), d.path() / "run");
  for (const char* precision : {"fp32", "bf16"})
    for (int zero = 0; zero <= 3; ++zero)
      for (const char* cf : {"1.25", "0"}) {
        // Recompute modes and the global aux-loss pre-pass ride along with the ZeRO stages.
        static const char* recompute[4] = {"none", "selective", "full", "selective"};
        const std::vector<std::string> sets = {std::string("train.precision=") + precision,
                                               "parallel.zero=" + std::to_string(zero), std::string("moe.capacity_factor=") + cf,
                                               std::string("train.recompute=") + recompute[zero],
                                               std::string("moe.aux_loss_scope=") + (zero == 2 ? "global" : "micro")};
        const std::string what = std::string(precision) + " zero " + std::to_string(zero) + " capacity_factor " + cf +
                                 " recompute " + recompute[zero];
        auto self = make_self_communicator();
        Trace cpu, dev;
        {
          Trainer tr(parse_config(yaml, sets, "t"), *self);
          cpu = run_steps(tr, 0, 3);
        }
        const i64 opens = MemoryGuard::get().opens();
        {
          Trainer tr(parse_config(yaml, sets, "t"), *self, guarded_device());
          EXPECT_GT(MemoryGuard::get().bytes(), 0) << what << ": nothing allocated in the guarded space";
          dev = run_steps(tr, 0, 3);
          if (zero <= 2) {  // world 1: the local parameters are the full model
            EXPECT_TRUE(bitwise(tr.params(), cpu.weights)) << what;
          }
        }
        EXPECT_GT(MemoryGuard::get().opens(), opens + 100) << what << ": the ops did not run through the guard";
        EXPECT_EQ(MemoryGuard::get().regions(), 0u) << what << ": guarded memory leaked";
        expect_same(dev, cpu, 0, what);
      }
}

// Checkpoints of device state go through host staging: save after 2 steps and resume on the guarded backend,
// bitwise the straight CPU run (fp32 ZeRO 3 and bf16 ZeRO 1).
TEST(DeviceSeam, CheckpointResumeOnGuardedBackend) {
  for (const std::vector<std::string>& sets :
       {std::vector<std::string>{"parallel.zero=3"}, std::vector<std::string>{"parallel.zero=1", "train.precision=bf16"}}) {
    TmpDir d;
    const std::string yaml = config_text(d.path(), d.path() / "run");
    auto self = make_self_communicator();
    std::vector<std::string> four = sets;
    four.push_back("train.steps=4");
    Trace cpu;
    {
      Trainer tr(parse_config(yaml, four, "t"), *self);
      cpu = run_steps(tr, 0, 4);
    }
    std::vector<std::string> two = sets;
    two.push_back("train.steps=2");
    {
      Trainer first(parse_config(yaml, two, "t"), *self, guarded_device());
      first.run();  // writes step_2.h5
    }
    ASSERT_TRUE(fs::exists(d.path() / "run/checkpoints/step_2.h5"));
    Trainer second(parse_config(yaml, four, "t"), *self, guarded_device());
    second.resume("auto");
    ASSERT_EQ(second.start_step(), 2);
    const Trace dev = run_steps(second, 2, 4);
    expect_same(dev, cpu, 2, sets.back());
  }
}

// ParamState alone with frozen entries (compact gradient sums at stages 0–1, packed reduce-scatter at 2–3): on
// guarded memory and a guarded communicator, bitwise the host state: reduced norm, update, checkpoint pieces.
TEST(DeviceSeam, ParamStateFrozenEntriesOnGuardedMemory) {
  ModelConfig m;
  m.vocab_size = 40;
  m.hidden_size = 8;
  m.intermediate_size = 12;
  m.num_layers = 2;
  m.num_heads = 2;
  m.num_kv_heads = 1;
  m.num_experts = 2;
  m.top_k = 1;
  ParamTable t = build_param_table(m);
  t.set_trainable("model.layers.1.self_attn.k_proj.weight", false);
  t.set_trainable("model.layers.0.input_layernorm.weight", false);
  auto self = make_self_communicator();
  GuardedComm gself(*self);
  std::vector<float> init(size_t(t.total_numel()));
  for (size_t i = 0; i < init.size(); ++i) init[i] = 0.01f * float(int(i % 97) - 48);
  for (int stage = 0; stage <= 3; ++stage) {
    auto gmem = std::make_unique<moe::test::GuardedMemOps>();
    moe::test::GuardedOptim gopt(make_cpu_optim_ops());
    ParamState host(t, stage, *self, *self, *self);
    ParamState dev(t, stage, gself, gself, gself, Precision::Fp32, gopt, *gmem);
    host.set_params(init);
    dev.set_params(init);
    TrainConfig tc;
    for (int step = 1; step <= 2; ++step) {
      double norms[2];
      for (int k = 0; k < 2; ++k) {
        ParamState& s = k == 0 ? host : dev;
        s.zero_grads();
        for (int micro = 0; micro < 2; ++micro)  // two micro-batches accumulate
          for (int u = int(t.units().size()) - 1; u >= 0; --u) {
            const i64 n = t.units()[size_t(u)].size();
            std::vector<float> g(static_cast<size_t>(n));
            for (i64 i = 0; i < n; ++i) g[size_t(i)] = 0.001f * float((i * 7 + u * 3 + micro + step) % 23) - 0.01f;
            float* dst = s.access().grads(u);
            if (k == 0) {
              for (i64 i = 0; i < n; ++i) dst[i] += g[size_t(i)];
            } else {
              // Host pattern added on "device": staged through a guarded buffer and the optimizer table.
              moe::test::GuardedMemOps& gm = *gmem;
              float* tmp = static_cast<float*>(gm.alloc(n * 4, "pattern"));
              gm.to_backend(tmp, g.data(), n * 4);
              gopt.accumulate(dst, tmp, n);
              gm.free(tmp);
            }
            s.access().grads_done(u);
          }
        norms[k] = s.reduce_grads();
        s.scale_grads(0.5f);
        s.adamw(tc, 1e-2, step);
      }
      EXPECT_EQ(norms[0], norms[1]) << "stage " << stage << " step " << step;
    }
    EXPECT_TRUE(bitwise(host.local_params(), dev.local_params())) << "stage " << stage;
    std::vector<TensorPiece> hp[3], dp[3];
    host.checkpoint_pieces(ParamState::PieceUse::Write, hp[0], hp[1], hp[2]);
    dev.checkpoint_pieces(ParamState::PieceUse::Write, dp[0], dp[1], dp[2]);
    for (int k = 0; k < 3; ++k) {
      ASSERT_EQ(hp[k].size(), dp[k].size());
      for (size_t i = 0; i < hp[k].size(); ++i) {
        EXPECT_FALSE(MemoryGuard::get().contains(dp[k][i].data)) << "checkpoint pieces must be host memory";
        EXPECT_EQ(std::memcmp(hp[k][i].data, dp[k][i].data, size_t(hp[k][i].end - hp[k][i].begin) * 4), 0)
            << "stage " << stage << " " << hp[k][i].name;
      }
    }
    dev.release_checkpoint_staging();
  }
}

// A diverged run names the first non-finite gradient from a host copy of device gradients (ZeRO 0): the same
// message as the CPU backend's, where a direct host read of the state would fault.
TEST(DeviceSeam, DivergenceNamesTensorOnGuardedBackend) {
  TmpDir d;
  const std::string yaml = config_text(d.path(), d.path() / "run");
  const std::vector<std::string> sets = {"train.lr=1e30", "train.grad_clip=0", "train.steps=50"};
  auto self = make_self_communicator();
  auto diverge = [&](const TrainerDevice& dev) -> std::string {
    Trainer tr(parse_config(yaml, sets, "t"), *self, dev);
    try {
      for (int s = 0; s < 50; ++s) tr.step(s);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Diverged);
      return e.what();
    }
    return "";
  };
  const std::string cpu = diverge({}), dev = diverge(guarded_device());
  ASSERT_NE(cpu.find("first non-finite gradient: model."), std::string::npos) << cpu;
  EXPECT_EQ(dev, cpu);
}

namespace {
// A guarded data communicator that notes, when it is destroyed, how much guarded ("device") memory is still held
// and whether an exception is unwinding: what the NCCL teardown order depends on.
struct Teardown {
  i64 bytes;
  bool unwinding;
};
class RecordingComm final : public Communicator {
 public:
  RecordingComm(std::unique_ptr<Communicator> in, std::vector<Teardown>& log) : in_(std::move(in)), log_(log) {}
  ~RecordingComm() override { log_.push_back({MemoryGuard::get().bytes(), std::uncaught_exceptions() > 0}); }
  int rank() const override { return in_->rank(); }
  int size() const override { return in_->size(); }
  MemSpace buffer_space() const override { return in_->buffer_space(); }
  void all_reduce_sum(void* b, i64 n, CommDtype t) override { in_->all_reduce_sum(b, n, t); }
  void iall_reduce_sum(void* b, i64 n, CommDtype t, CommRequest& r) override { in_->iall_reduce_sum(b, n, t, r); }
  void reduce_scatter_sum(void* r, const void* s, i64 n, CommDtype t) override { in_->reduce_scatter_sum(r, s, n, t); }
  void ireduce_scatter_sum(void* r, const void* s, i64 n, CommDtype t, CommRequest& q) override {
    in_->ireduce_scatter_sum(r, s, n, t, q);
  }
  void all_gather(void* r, const void* s, i64 n, CommDtype t) override { in_->all_gather(r, s, n, t); }
  void iall_gather(void* r, const void* s, i64 n, CommDtype t, CommRequest& q) override { in_->iall_gather(r, s, n, t, q); }
  void wait(CommRequest& q) override { in_->wait(q); }
  void all_to_all_v(const void* s, const i64* sc, const i64* sd, void* r, const i64* rc, const i64* rd,
                    CommDtype t) override {
    in_->all_to_all_v(s, sc, sd, r, rc, rd, t);
  }
  void broadcast(void* b, i64 n, CommDtype t, int root) override { in_->broadcast(b, n, t, root); }
  void barrier() override { in_->barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<RecordingComm>(in_->split(color, key), log_);
  }

 private:
  std::unique_ptr<Communicator> in_;
  std::vector<Teardown>& log_;
};
}  // namespace

// contract: the device seam's teardown. The data communicators (NCCL on a GPU) are destroyed after the state (which
// completes its requests) but while the backend still holds its memory (before its stream and context); while an
// exception unwinds they go first, before any device memory is freed (a freeing cudaFree waits for every collective
// in flight, and ncclCommFinalize for peers that are not finalizing: the failing rank would hang, its message unseen).
TEST(DeviceSeam, DataCommunicatorsTornDownBeforeBackendMemory) {
  TmpDir d;
  const std::string yaml = config_text(d.path(), d.path() / "run");
  auto self = make_self_communicator();
  for (const char* zero : {"0", "3"}) {
    std::vector<Teardown> log;
    TrainerDevice dev = guarded_device();
    dev.make_data_world = [&log](Communicator& host) -> std::unique_ptr<Communicator> {
      return std::make_unique<RecordingComm>(std::make_unique<GuardedComm>(host.split(0, host.rank())), log);
    };
    const i64 before = MemoryGuard::get().bytes();
    {
      Trainer tr(parse_config(yaml, {std::string("parallel.zero=") + zero}, "t"), *self, dev);
      tr.step(0);
    }
    ASSERT_EQ(log.size(), 3u) << "the data world and its two groups";
    for (const Teardown& t : log) {
      EXPECT_FALSE(t.unwinding);
      EXPECT_GT(t.bytes, before) << "zero " << zero << ": a data communicator outlived the backend's memory";
    }
    EXPECT_EQ(MemoryGuard::get().bytes(), before);

    // A divergence (an error thrown out of step) unwinds the trainer: the communicators go before any memory.
    log.clear();
    i64 held = -1;
    try {
      Trainer tr(parse_config(yaml, {std::string("parallel.zero=") + zero, "train.lr=1e30", "train.grad_clip=0",
                                     "train.steps=50"}, "t"),
                 *self, dev);
      held = MemoryGuard::get().bytes();
      for (int s = 0; s < 50; ++s) tr.step(s);
      FAIL() << "zero " << zero << ": the run did not diverge";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Diverged);
    }
    ASSERT_EQ(log.size(), 3u);
    for (const Teardown& t : log) {
      EXPECT_TRUE(t.unwinding);
      EXPECT_EQ(t.bytes, held) << "zero " << zero << ": device memory was freed before the data communicators";
    }
    EXPECT_EQ(MemoryGuard::get().bytes(), before);
  }
}
