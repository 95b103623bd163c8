# Registers the checkpoint crash and preemption tests (label cpu).
add_test(NAME ckpt.sigkill_loop COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/sigkill_loop.sh $<TARGET_FILE:moe-train>)
add_test(NAME ckpt.sigusr1_resume COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/sigusr1_resume.sh $<TARGET_FILE:moe-train>
                                          $<TARGET_FILE:moe-export>)
set_tests_properties(ckpt.sigkill_loop ckpt.sigusr1_resume PROPERTIES LABELS cpu TIMEOUT 300
                     ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
# Issue 8: metrics.jsonl write errors (a full 64 KiB tmpfs, skipped with 77 where mount is refused; an injected
# EIO), metrics.jsonl after a resume, damaged /meta (edited with the oracle venv's h5py).
if(NOT MOE_VENV_PY)
  set(MOE_VENV_PY "$ENV{HOME}/.cache/moe-train/venv/bin/python")
endif()
add_test(NAME ckpt.metrics_write_fault.tmpfs
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/metrics_faults.sh $<TARGET_FILE:moe-train> tmpfs)
add_test(NAME ckpt.metrics_write_fault.inject
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/metrics_faults.sh $<TARGET_FILE:moe-train> inject)
add_test(NAME ckpt.resume_metrics COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/resume_metrics.sh $<TARGET_FILE:moe-train>)
add_test(NAME ckpt.damaged_meta
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/damaged_meta.sh $<TARGET_FILE:moe-train> ${MOE_VENV_PY})
set_tests_properties(ckpt.metrics_write_fault.tmpfs ckpt.metrics_write_fault.inject ckpt.resume_metrics
                     ckpt.damaged_meta PROPERTIES LABELS cpu TIMEOUT 300 SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
