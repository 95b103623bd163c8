// Owns the one family of check macros for CUDA runtime, kernel launch, cuBLAS(Lt), cuDNN and NCCL calls.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

// Every CUDA runtime call: an error is an Internal error naming the call and CUDA's message.
#define MT_CUDA(call)                                                                        \
  do {                                                                                       \
    const cudaError_t mt_e_ = (call);                                                        \
    MT_CHECK(mt_e_ == cudaSuccess, #call " failed: ", cudaGetErrorString(mt_e_));            \
  } while (0)

// After every kernel launch (<<<...>>>): launch-configuration errors surface here, not at a later sync.
#define MT_CUDA_LAUNCH(what)                                                                 \
  do {                                                                                       \
    const cudaError_t mt_e_ = cudaGetLastError();                                            \
    MT_CHECK(mt_e_ == cudaSuccess, "kernel launch ", what, " failed: ", cudaGetErrorString(mt_e_)); \
  } while (0)

#define MT_CUBLAS(call)                                                                      \
  do {                                                                                       \
    const cublasStatus_t mt_s_ = (call);                                                     \
    MT_CHECK(mt_s_ == CUBLAS_STATUS_SUCCESS, #call " failed: ", cublasGetStatusString(mt_s_)); \
  } while (0)

// Every NCCL call whose result is final when it returns (queries, ncclGetUniqueId; files that include <nccl.h>
// only). Calls on a non-blocking communicator, which may answer ncclInProgress, go through the communicator's own
// wait (comm/nccl_comm.cpp) so that an error or a dead peer aborts every rank instead of hanging.
#define MT_NCCL(call)                                                                        \
  do {                                                                                       \
    const ncclResult_t mt_r_ = (call);                                                       \
    MT_CHECK(mt_r_ == ncclSuccess, #call " failed: ", ncclGetErrorString(mt_r_));            \
  } while (0)
