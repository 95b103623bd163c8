// Owns the libFuzzer harness of the checkpoint reader: any bytes as a checkpoint file; read_checkpoint_meta and verify_checkpoint may only answer or raise moe::Error.
//
// Dependencies (for tests/fuzz/fuzz.cmake):
//   sources       tests/fuzz/fuzz_checkpoint.cpp src/io/checkpoint.cpp
//   headers       src/core/error.h src/core/dims.h src/io/checksum.h src/io/fault_inject.h comm/communicator.h
//   include dirs  src/ and the repository root; HDF5's (pkg-config --cflags hdf5-openmpi)
//   libraries     parallel HDF5 (pkg-config --libs hdf5-openmpi) and MPI C (mpicc --showme:link); OpenMP is
//                 optional (without -fopenmp its pragmas are ignored)
//   seed corpus   tests/fuzz/corpus/checkpoint/ (h5repack'ed checkpoints of a 1-layer model, formats 1 and 2)
//   regressions   tests/fuzz/regressions/checkpoint/ (inputs that once failed; each must now run clean)
//   known_crashes tests/fuzz/known_crashes/checkpoint/ (crashes inside libhdf5 itself; see its README; not run)
// Run-time settings are built in (below): a huge allocation HDF5 asks for on a damaged header returns NULL as
// in a release build (HDF5 then fails cleanly), HDF5's own leaks on failed opens are suppressed, and
// -malloc_limit_mb=4096 is added unless given.
// By hand:
//   clang++ -g -O1 -fsanitize=fuzzer,address -std=c++17 -Isrc -I. tests/fuzz/fuzz_checkpoint.cpp src/io/checkpoint.cpp \
//     $(pkg-config --cflags --libs hdf5-openmpi) $(mpicc --showme:link) -o fuzz_checkpoint
//   ./fuzz_checkpoint -max_total_time=60 -max_len=200000 tests/fuzz/corpus/checkpoint
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint.h"

// A damaged object header makes HDF5 ask for up to 2^64 bytes; release builds get NULL and fail cleanly.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }
// libhdf5 1.10 leaks internal blocks when H5Fopen of a damaged file fails (nothing comes back to close).
extern "C" const char* __lsan_default_suppressions() { return "leak:libhdf5_openmpi.so\nleak:libhdf5.so\n"; }

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // HDF5 may legitimately allocate a few GiB for a damaged size field before failing: raise libFuzzer's
  // single-allocation limit (default 2048 MiB) unless the caller set one.
  static std::vector<char*> args((*argv), (*argv) + *argc);
  for (char* a : args)
    if (std::string(a).rfind("-malloc_limit_mb=", 0) == 0) return 0;
  static char limit[] = "-malloc_limit_mb=4096";
  args.push_back(limit);
  args.push_back(nullptr);
  *argc += 1;
  *argv = args.data();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // HDF5 opens files by name: the input goes to a per-process temporary (rewritten each run).
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/moe_fuzz_checkpoint_" + std::to_string(::getpid()) + ".h5";
  }();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  const bool written = size == 0 || std::fwrite(data, 1, size, f) == size;
  std::fclose(f);
  if (!written) return 0;
  try {
    moe::read_checkpoint_meta(path);
  } catch (const moe::Error& e) {
    // The expected answer to a damaged file is BadInput (exit 2); anything else is a bug in the reader.
    if (e.kind() != moe::ErrorKind::BadInput) {
      std::fprintf(stderr, "read_checkpoint_meta raised a non-input error: %s\n", e.what());
      __builtin_trap();
    }
  }
  (void)moe::verify_checkpoint(path);  // returns the reason; must not throw or crash
  return 0;
}
