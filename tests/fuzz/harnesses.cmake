# Owns the per-harness build lists of tests/fuzz: which project sources and libraries each fuzz_<name>.cpp needs.
# Every tests/fuzz/fuzz_<name>.cpp is built (glob); a harness not listed here gets no project sources.
#   MOE_FUZZ_SOURCES_<name>: project sources (relative to the repo root) compiled with the harness.
#   MOE_FUZZ_NEEDS_<name>:   extra libraries by keyword: HDF5 (parallel HDF5, its headers for src/io/checkpoint.cpp), MPI,
#                            TOKENIZER (src/data/tokenizer/*.cpp with PCRE2 + ICU: token data and HF export read
#                            tokenizer directories).
set(MOE_FUZZ_SOURCES_safetensors src/io/safetensors.cpp)
set(MOE_FUZZ_SOURCES_hf_config src/io/hf_model.cpp src/io/safetensors.cpp src/model/param_table.cpp src/peft/lora.cpp
    src/config/config.cpp)
set(MOE_FUZZ_SOURCES_yaml_config src/config/config.cpp)
set(MOE_FUZZ_NEEDS_hf_config TOKENIZER)
set(MOE_FUZZ_SOURCES_token_data src/data/token_data.cpp)
set(MOE_FUZZ_NEEDS_token_data TOKENIZER)
set(MOE_FUZZ_SOURCES_checkpoint src/io/checkpoint.cpp comm/self_comm.cpp)
set(MOE_FUZZ_NEEDS_checkpoint HDF5 MPI)
