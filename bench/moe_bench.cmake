# Owns the moe-bench target (src/apps/moe_bench.cpp: per-phase MoE layer timing and the EP all-to-all ratio); included from the top-level CMakeLists.txt.
add_executable(moe-bench ${CMAKE_SOURCE_DIR}/src/apps/moe_bench.cpp)
target_link_libraries(moe-bench PRIVATE moe_core CLI11::CLI11)
