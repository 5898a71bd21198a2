# Slurm tests (label "slurm"; `ctest -L slurm` selects them).
# slurm.requeue_logic runs the sbatch scripts under plain bash with stub srun/mpirun/scontrol/lora.
# slurm.cluster.<case> starts a real one-node Slurm (munged, slurmctld, slurmd as root) in a
# temporary directory and submits slurm/*-cpu.sbatch; exit 77 means skipped, with the reason
# printed (Slurm not installed, not root, or a launch path this machine's MPI cannot use). They
# share the machine's cores and take turns (RESOURCE_LOCK).
add_test(NAME slurm.requeue_logic
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_requeue_logic.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(slurm.requeue_logic PROPERTIES TIMEOUT 60 LABELS "slurm")

foreach(slurm_case train mpirun pmi2 preempt preempt_mpirun cancel sweep)
  add_test(NAME slurm.cluster.${slurm_case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run_slurm_tests.sh $<TARGET_FILE:lora>
                   ${PROJECT_SOURCE_DIR} ${LORA_MPIEXEC} ${LORA_PYTHON} ${slurm_case})
  set_tests_properties(slurm.cluster.${slurm_case} PROPERTIES
    TIMEOUT 300 SKIP_RETURN_CODE 77 PROCESSORS 2 RESOURCE_LOCK slurm_cluster
    LABELS "slurm;slurm_cluster"
    ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
endforeach()
