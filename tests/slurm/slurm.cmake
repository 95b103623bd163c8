# Registers the Slurm tests (label slurm): a real local cluster (slurm/local_cluster.sh) runs MPI ranks via srun/sbatch + PMIx.
# Each script starts its own cluster in a fresh /tmp/moe-slurm-test.XXXXXX, stops it on exit, and exits 77
# (skip) when not root or when slurm-wlm / munge / mpicc are missing. RUN_SERIAL: both use that cluster and all CPUs.
add_test(NAME slurm.srun_pmix COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_srun_mpi.sh ${CMAKE_BINARY_DIR})
set_tests_properties(slurm.srun_pmix PROPERTIES LABELS slurm TIMEOUT 300 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
add_test(NAME slurm.preempt_requeue COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_preempt_requeue.sh ${CMAKE_BINARY_DIR})
set_tests_properties(slurm.preempt_requeue PROPERTIES LABELS slurm TIMEOUT 300 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
