# Owns the fuzz tests: builds every tests/fuzz/fuzz_<name>.cpp with clang + libFuzzer (sub-build in <build>/fuzz,
# see CMakeLists.txt there) and registers fuzz.<name> (a short fuzz run, label fuzz), fuzz.<name>.regressions
# (every saved crash input and seed replayed, label fuzz) and fuzz.<name>.replay_gcc (the same inputs through
# the g++ build, label cpu).
include(ExternalProject)
set(MOE_FUZZ_SECONDS 15 CACHE STRING "seconds each fuzz.<name> test mutates inputs")
set(MOE_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})
file(GLOB MOE_FUZZ_HARNESS_SRCS CONFIGURE_DEPENDS ${MOE_FUZZ_DIR}/fuzz_*.cpp)

# Does clang++ link a libFuzzer + ASan + UBSan program here?
find_program(MOE_CLANGXX NAMES clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14)
find_program(MOE_CLANG NAMES clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14)
set(MOE_FUZZ_OK OFF)
if(MOE_CLANGXX AND MOE_CLANG)
  set(probe ${CMAKE_BINARY_DIR}/fuzz_probe)
  file(WRITE ${probe}.cpp "#include <cstdint>\n#include <cstddef>\nextern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n")
  execute_process(COMMAND ${MOE_CLANGXX} -fsanitize=fuzzer,address,undefined ${probe}.cpp -o ${probe}
                  RESULT_VARIABLE probe_rc OUTPUT_QUIET ERROR_QUIET)
  if(probe_rc EQUAL 0)
    set(MOE_FUZZ_OK ON)
  endif()
endif()

set(MOE_FUZZ_BIN ${CMAKE_BINARY_DIR}/fuzz)
if(MOE_FUZZ_OK)
  message(STATUS "fuzz harnesses: clang libFuzzer (${MOE_CLANGXX})")
  ExternalProject_Add(moe_fuzz
    SOURCE_DIR ${MOE_FUZZ_DIR}
    BINARY_DIR ${MOE_FUZZ_BIN}
    CMAKE_ARGS -DCMAKE_CXX_COMPILER=${MOE_CLANGXX} -DCMAKE_C_COMPILER=${MOE_CLANG} -DCMAKE_BUILD_TYPE=
               -DCMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER}
    INSTALL_COMMAND ""
    BUILD_ALWAYS ON)
else()
  message(WARNING "clang++ with libFuzzer not found (Debian: clang libclang-rt-dev): the fuzz.* tests will fail")
  add_test(NAME fuzz.toolchain COMMAND sh -c "echo 'clang++ with -fsanitize=fuzzer is not available; run launch/setup.sh' >&2; exit 1")
  set_tests_properties(fuzz.toolchain PROPERTIES LABELS fuzz)
endif()

foreach(src ${MOE_FUZZ_HARNESS_SRCS})
  get_filename_component(target ${src} NAME_WE)
  string(REGEX REPLACE "^fuzz_" "" name ${target})
  set(work ${MOE_FUZZ_BIN}/work/${name})
  if(MOE_FUZZ_OK)
    add_test(NAME fuzz.${name}
             COMMAND bash ${MOE_FUZZ_DIR}/run_fuzz.sh fuzz ${MOE_FUZZ_BIN}/${target} ${name} ${MOE_FUZZ_DIR} ${work}
                     ${MOE_FUZZ_SECONDS})
    add_test(NAME fuzz.${name}.regressions
             COMMAND bash ${MOE_FUZZ_DIR}/run_fuzz.sh replay ${MOE_FUZZ_BIN}/${target} ${name} ${MOE_FUZZ_DIR} ${work})
    math(EXPR limit "${MOE_FUZZ_SECONDS} + 120")
    set_tests_properties(fuzz.${name} PROPERTIES LABELS fuzz TIMEOUT ${limit})
    set_tests_properties(fuzz.${name}.regressions PROPERTIES LABELS fuzz TIMEOUT 120)
  endif()
  # The same inputs through the normal (g++) build: no sanitizers, but every input must end in BadInput or pass.
  add_executable(${target}_replay ${src} ${MOE_FUZZ_DIR}/replay_main.cpp)
  target_include_directories(${target}_replay PRIVATE ${MOE_FUZZ_DIR})
  target_link_libraries(${target}_replay PRIVATE moe_core)
  add_test(NAME fuzz.${name}.replay_gcc
           COMMAND bash ${MOE_FUZZ_DIR}/run_fuzz.sh replay $<TARGET_FILE:${target}_replay> ${name} ${MOE_FUZZ_DIR}
                   ${work}-gcc)
  set_tests_properties(fuzz.${name}.replay_gcc PROPERTIES LABELS cpu TIMEOUT 120)
endforeach()
