// Owns the ConfigCommBackend.* tests: parallel.backend auto → nccl on cuda / mpi on cpu, and the refusal of a
// backend that cannot move the device's buffers (unsupported_options, exit 2).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.h"
#include "train/preflight.h"

namespace moe {
namespace {

Config with(const char* device, const char* backend) {
  return parse_config("", {std::string("train.device=") + device, std::string("parallel.backend=") + backend}, "x.yaml");
}

// The entries of unsupported_options that mention parallel.backend.
std::vector<std::string> backend_problems(const Config& c) {
  std::vector<std::string> out;
  for (const std::string& s : unsupported_options(c))
    if (s.find("parallel.backend") != std::string::npos) out.push_back(s);
  return out;
}

TEST(ConfigCommBackend, AutoResolvesByDevice) {
  EXPECT_EQ(resolve_comm_backend(with("cuda", "auto")), CommBackend::Nccl);
  EXPECT_EQ(resolve_comm_backend(with("cpu", "auto")), CommBackend::Mpi);
  EXPECT_EQ(resolve_comm_backend(with("cuda", "nccl")), CommBackend::Nccl);
  EXPECT_EQ(resolve_comm_backend(with("cpu", "mpi")), CommBackend::Mpi);
}

TEST(ConfigCommBackend, GpuConfigsRunOnNccl) {
  for (const char* f : {"configs/mixtral.yaml", "configs/qwen3_moe.yaml"}) {
    const Config c = load_config(std::string(MOE_SOURCE_DIR) + "/" + f, {});
    EXPECT_EQ(c.train.device, Device::Cuda) << f;
    EXPECT_EQ(resolve_comm_backend(c), CommBackend::Nccl) << f;
    EXPECT_TRUE(backend_problems(c).empty()) << f << ": " << backend_problems(c)[0];
  }
}

TEST(ConfigCommBackend, BackendMustMatchTheDevice) {
  EXPECT_TRUE(backend_problems(with("cuda", "nccl")).empty());
  EXPECT_TRUE(backend_problems(with("cuda", "auto")).empty());
  EXPECT_TRUE(backend_problems(with("cpu", "auto")).empty());
  EXPECT_TRUE(backend_problems(with("cpu", "mpi")).empty());
  const auto a = backend_problems(with("cpu", "nccl"));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_NE(a[0].find("needs train.device: cuda"), std::string::npos) << a[0];
  const auto b = backend_problems(with("cuda", "mpi"));
  ASSERT_EQ(b.size(), 1u);
  EXPECT_NE(b[0].find("mpi cannot move GPU memory"), std::string::npos) << b[0];
}

}  // namespace
}  // namespace moe
