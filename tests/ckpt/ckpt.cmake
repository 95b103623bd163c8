# Registers the checkpoint crash and preemption tests (label cpu).
add_test(NAME ckpt.sigkill_loop COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/sigkill_loop.sh $<TARGET_FILE:moe-train>)
add_test(NAME ckpt.sigusr1_resume COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/sigusr1_resume.sh $<TARGET_FILE:moe-train>
                                          $<TARGET_FILE:moe-export>)
set_tests_properties(ckpt.sigkill_loop ckpt.sigusr1_resume PROPERTIES LABELS cpu TIMEOUT 300
                     ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
