// Owns the main() of the MPI GoogleTest programs: start the runtime, print on rank 0 only, fail if any rank failed.
#pragma once
#include <gtest/gtest.h>

#include "train/runtime.h"

inline int run_mpi_gtests(int argc, char** argv, moe::Runtime** out) {
  ::testing::InitGoogleTest(&argc, argv);
  static moe::Runtime rt = moe::start_runtime();
  *out = &rt;
  if (rt.world->rank() != 0) {
    // Only rank 0 prints the summary; every rank still runs and asserts.
    ::testing::TestEventListeners& l = ::testing::UnitTest::GetInstance()->listeners();
    delete l.Release(l.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  int64_t bad = rc != 0;
  rt.world->all_reduce_sum(&bad, 1);
  moe::stop_runtime(rt);
  return bad ? 1 : 0;
}

#define MOE_MPI_GTEST_MAIN(g_rt) \
  int main(int argc, char** argv) { return run_mpi_gtests(argc, argv, &(g_rt)); }
