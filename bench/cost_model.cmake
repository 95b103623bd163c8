# Owns the routing-overhead cost model targets (issue 13 item 5): the moe_costmodel library (src/bench/cost_model*.cpp, Eigen seen only there) and the moe-costmodel CLI; included from the top-level CMakeLists.txt.
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
file(GLOB MOE_COSTMODEL_SRC CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/bench/cost_model*.cpp)
add_library(moe_costmodel STATIC ${MOE_COSTMODEL_SRC})
target_include_directories(moe_costmodel PUBLIC ${CMAKE_SOURCE_DIR}/src)
target_link_libraries(moe_costmodel PUBLIC nlohmann_json::nlohmann_json PRIVATE Eigen3::Eigen)

add_executable(moe-costmodel ${CMAKE_SOURCE_DIR}/src/apps/moe_costmodel.cpp)
target_link_libraries(moe-costmodel PRIVATE moe_costmodel CLI11::CLI11)

# tests/unit/test_cost_model.cpp is made by the unit-test glob (tests/CMakeLists.txt, which runs first); it needs
# the library too. tests/cli/costmodel_cli.sh: the CLI's exit codes and outputs (label cpu).
if(TARGET test_cost_model)
  target_link_libraries(test_cost_model PRIVATE moe_costmodel)
endif()
if(BUILD_TESTING)
  add_test(NAME cli.costmodel COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli/costmodel_cli.sh $<TARGET_FILE:moe-costmodel>)
  set_tests_properties(cli.costmodel PROPERTIES LABELS cpu TIMEOUT 120)
endif()
