// Owns the checkpoint I/O benchmark: HDF5 checkpoint write/read MB/s against a plain sequential write/read of the same bytes in the same run.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "config/config.h"
#include "io/checkpoint.h"
#include "train/runtime.h"
#include "train/trainer.h"

using namespace moe;
namespace fs = std::filesystem;

// fsync the file, then drop it from the page cache so the next read comes from the disk.
static void sync_and_evict(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main(int argc, char** argv) {
  Runtime rt = start_runtime();
  Communicator& w = *rt.world;
  const std::string dir = argc > 1 ? argv[1] : "/tmp/moe_ckpt_bench";
  const int layers = argc > 2 ? std::atoi(argv[2]) : 8;
  if (w.rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::mt19937 rng(1);
    std::ofstream f(dir + "/tokens.bin", std::ios::binary);
    for (int i = 0; i < 5000; ++i) {
      const uint32_t v = rng() % 256;
      f.write(reinterpret_cast<const char*>(&v), 4);
    }
  }
  w.barrier();
  // ~H=512, 8 experts of 1024: about 33 M parameters per 8 layers → 400 MB of weights + moments.
  const std::string yaml = "run: {dir: " + dir + "/run}\n"
      "model: {arch: mixtral, vocab_size: 256, hidden_size: 512, intermediate_size: 1024, num_layers: " +
      std::to_string(layers) + ", num_heads: 8, num_kv_heads: 8, num_experts: 8, top_k: 2}\n"
      "train: {seq_len: 16, micro_batch: 1, grad_accum: 1, steps: 1}\n"
      "parallel: {zero: " + std::string(w.size() > 1 ? "1" : "0") + "}\n"
      "data: {format: tokens, path: " + dir + "/tokens.bin}\n";
  Trainer tr(parse_config(yaml, {}, "bench"), w);
  const double bytes = 3.0 * 4.0 * double(build_param_table(tr.model_config()).tensor_numel());  // weights + 2 moments

  // Both sides are timed with fsync and read back from the disk (page cache dropped with posix_fadvise).
  // Baseline: the same number of bytes written and read sequentially by each rank's share, like
  // `dd bs=16M conv=fsync`; measured before and after the checkpoint (the mean is the baseline).
  const size_t share = size_t(bytes / w.size());
  std::vector<char> buf(size_t(16) << 20, 1);
  const std::string plain = dir + "/plain." + std::to_string(w.rank());
  auto plain_io = [&](double& pw, double& pr) {
    w.barrier();
    double t = now();
    FILE* f = std::fopen(plain.c_str(), "wb");
    for (size_t done = 0; done < share; done += buf.size()) std::fwrite(buf.data(), 1, std::min(buf.size(), share - done), f);
    std::fclose(f);
    sync_and_evict(plain);
    w.barrier();
    pw = now() - t;
    t = now();
    f = std::fopen(plain.c_str(), "rb");
    while (std::fread(buf.data(), 1, buf.size(), f) > 0) {
    }
    std::fclose(f);
    w.barrier();
    pr = now() - t;
    std::remove(plain.c_str());
  };
  double pw1, pr1, pw2, pr2;
  plain_io(pw1, pr1);
  w.barrier();
  double t0 = now();
  const std::string path = tr.save_checkpoint();
  if (w.rank() == 0) sync_and_evict(path);
  w.barrier();
  const double t_write = now() - t0;
  t0 = now();
  Trainer reader(parse_config(yaml, {}, "bench"), w);
  const double t_setup = now() - t0;
  t0 = now();
  reader.resume(path);
  w.barrier();
  const double t_read = now() - t0;

  plain_io(pw2, pr2);
  const double p_write = 0.5 * (pw1 + pw2), p_read = 0.5 * (pr1 + pr2);
  if (w.rank() == 0) {
    const double mb = bytes / 1e6;
    std::printf("checkpoint %.0f MB (%d ranks): write %.0f MB/s vs plain %.0f MB/s -> ratio %.2f | read %.0f MB/s vs plain "
                "%.0f MB/s -> ratio %.2f (reader setup %.2fs not counted)\n",
                mb, w.size(), mb / t_write, mb / p_write, p_write / t_write, mb / t_read, mb / p_read, p_read / t_read, t_setup);
    fs::remove_all(dir);
  }
  stop_runtime(rt);
  return 0;
}
