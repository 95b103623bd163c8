// Owns the NCCL backend check on one GPU (a 1-rank world bootstrapped from the self communicator); exits 77 without a GPU.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "comm/communicator.h"

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: skipping NCCL communicator test\n");
    return 77;
  }
  auto boot = moe::make_self_communicator();
  auto nccl = moe::make_nccl_world(*boot, 0);
  std::vector<float> h = {1, 2, 3, 4};
  float* d = nullptr;
  float* r = nullptr;
  cudaMalloc(&d, 4 * sizeof(float));
  cudaMalloc(&r, 4 * sizeof(float));
  cudaMemcpy(d, h.data(), 4 * sizeof(float), cudaMemcpyHostToDevice);
  nccl->all_reduce_sum(d, 4, moe::CommDtype::F32);
  const moe::i64 sc[1] = {3}, sd[1] = {1}, rc[1] = {3}, rd[1] = {0};
  nccl->all_to_all_v(d, sc, sd, r, rc, rd, moe::CommDtype::F32);
  std::vector<float> out(4, 0.f);
  cudaMemcpy(out.data(), r, 3 * sizeof(float), cudaMemcpyDeviceToHost);
  const bool ok = out[0] == 2 && out[1] == 3 && out[2] == 4 && nccl->size() == 1;
  std::printf("nccl 1-rank all_reduce + all_to_all_v: %s\n", ok ? "ok" : "MISMATCH");
  cudaFree(d);
  cudaFree(r);
  return ok ? 0 : 1;
}
