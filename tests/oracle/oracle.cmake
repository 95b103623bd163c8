# Owns the CTest registration of the python oracle tests (label oracle); included from tests/CMakeLists.txt.
#
# Each tests/oracle/test_*.py becomes `oracle.<file>`, run by the venv's python with pytest.
# The venv comes from launch/setup.sh ($MOE_TRAIN_VENV or ~/.cache/moe-train/venv). A missing
# venv makes these tests FAIL with a message (they never skip): oracles are part of the contract.

# MOE_VENV_PY (the venv's python) is set by the top-level CMakeLists.txt, which log.plots uses too.

set(MOE_ORACLE_DIR ${CMAKE_CURRENT_LIST_DIR})
file(GLOB MOE_ORACLE_TESTS CONFIGURE_DEPENDS ${MOE_ORACLE_DIR}/test_*.py)

foreach(test_py ${MOE_ORACLE_TESTS})
  get_filename_component(test_name ${test_py} NAME_WE)
  get_filename_component(test_file ${test_py} NAME)
  # The shell wrapper checks the venv at test time (it may be created after configure) and
  # fails with the fix; otherwise it runs pytest (-x: stop at the first failure).
  add_test(NAME oracle.${test_name}
           COMMAND sh -c "if ! [ -x \"$1\" ] || ! \"$1\" -c 'import pytest, torch, transformers, safetensors, yaml' 2>/dev/null; then echo \"oracle venv missing or incomplete at $1: run launch/setup.sh (or set MOE_TRAIN_VENV / -DMOE_VENV_PY=...)\" >&2; exit 1; fi; exec \"$1\" -m pytest -x -q -p no:cacheprovider \"$2\""
                   sh ${MOE_VENV_PY} ${test_file}
           WORKING_DIRECTORY ${MOE_ORACLE_DIR})
  set_tests_properties(oracle.${test_name} PROPERTIES
                       LABELS oracle
                       TIMEOUT 600
                       ENVIRONMENT "MOE_BUILD_DIR=${CMAKE_BINARY_DIR};OMP_NUM_THREADS=2;OPENBLAS_NUM_THREADS=2;PYTHONDONTWRITEBYTECODE=1")
endforeach()

# Tool of the upcycling oracle (test_upcycle.py, registered by the glob above as oracle.test_upcycle):
# dense HF dir → upcycle_dense → save_hf_model; lands next to moe-debug in <build>/tests/.
add_executable(moe-upcycle-dump ${CMAKE_CURRENT_LIST_DIR}/../tools/moe_upcycle_dump.cpp)
target_link_libraries(moe-upcycle-dump PRIVATE moe_core CLI11::CLI11)

# Tool of the NF4 oracle (test_nf4.py): raw fp32 → our NF4 codes / stats / dequantized values; in <build>/tests/.
add_executable(moe-nf4-dump ${CMAKE_CURRENT_LIST_DIR}/../tools/moe_nf4_dump.cpp)
target_link_libraries(moe-nf4-dump PRIVATE moe_core CLI11::CLI11)

# Tool of the PEFT adapter oracles (test_peft_adapter*.py): HF base + PEFT adapter → read_peft_adapter → both layouts
# + merged HF model; in <build>/tests/.
add_executable(moe-peft-roundtrip ${CMAKE_CURRENT_LIST_DIR}/../tools/moe_peft_roundtrip.cpp)
target_link_libraries(moe-peft-roundtrip PRIVATE moe_core CLI11::CLI11)
