# Owns the moe-bench target (src/apps/moe_bench.cpp: per-phase timing of the real MoE layer and the routing-overhead cost model); included from the top-level CMakeLists.txt after bench/cost_model.cmake.
add_executable(moe-bench ${CMAKE_SOURCE_DIR}/src/apps/moe_bench.cpp)
target_link_libraries(moe-bench PRIVATE moe_core moe_costmodel CLI11::CLI11)
