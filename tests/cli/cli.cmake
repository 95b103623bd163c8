# Owns the CLI test registration: one CTest test cli.<case> per case of run_cli_tests.sh (label cpu).
set(MOE_CLI_CASES
    export_replaces_weights export_refusals data_sources
    unknown_key wrong_type bad_enum bad_set missing_config missing_data token_id_ge_vocab data_too_short
    data_odd_size eval_errors init_from_ok truncated_safetensors shape_mismatch missing_tensor bad_config_json
    init_from_not_a_dir dry_run unsupported_device cuda_device diverged demo_ok dry_run_refuses unimplemented_keys
    world_without_dry_run memory_plan_exceeds lora_config_errors lora_ok peft_configs loss_spike run_dir_lock run_dir_overwrite signal_during_startup
    ckpt_unchecksummed_format run_dir_claims deep_json_safetensors deep_json_config odd_head_dim data_not_regular
    metrics_resume_hostile recompute_key bf16_cpu)
foreach(case ${MOE_CLI_CASES})
  add_test(NAME cli.${case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run_cli_tests.sh ${case} $<TARGET_FILE:moe-train>)
  set_tests_properties(cli.${case} PROPERTIES LABELS cpu TIMEOUT 120)
endforeach()
