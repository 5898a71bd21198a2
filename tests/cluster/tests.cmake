# Multi-host tests (label "multihost"; `ctest -L multihost` selects them): a 3-host cluster of
# network + UTS namespaces joined by veth pairs and a bridge, created by each test and removed at its
# end (tests/cluster/cluster.sh). They need root and iproute2; without them they are skipped (exit
# 77) with the reason printed. They take turns (RESOURCE_LOCK) since each runs up to 6 ranks.
foreach(cluster_case equal ranks6 bytes)
  add_test(NAME multihost.mpirun.${cluster_case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run_mpirun_tests.sh $<TARGET_FILE:lora>
                   ${PROJECT_SOURCE_DIR} ${LORA_PYTHON} ${cluster_case})
  set_tests_properties(multihost.mpirun.${cluster_case} PROPERTIES
    TIMEOUT 180 SKIP_RETURN_CODE 77 PROCESSORS 2 RESOURCE_LOCK lora_cluster LABELS "multihost")
endforeach()

foreach(cluster_case link_cut link_cut_keepalive host_kill mpirun_kill)
  add_test(NAME multihost.fault.${cluster_case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run_fault_tests.sh $<TARGET_FILE:lora>
                   ${PROJECT_SOURCE_DIR} ${LORA_PYTHON} ${cluster_case})
  set_tests_properties(multihost.fault.${cluster_case} PROPERTIES
    TIMEOUT 180 SKIP_RETURN_CODE 77 PROCESSORS 2 RESOURCE_LOCK lora_cluster LABELS "multihost")
endforeach()

# The sbatch scripts as multi-node jobs on a Slurm with one slurmd per host
# (tests/cluster/slurm_hosts.sh); also skipped without Slurm and munge.
foreach(cluster_case train mpirun preempt sweep srun_kill)
  add_test(NAME multihost.slurm.${cluster_case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run_slurm_tests.sh $<TARGET_FILE:lora>
                   ${PROJECT_SOURCE_DIR} ${LORA_PYTHON} ${cluster_case})
  set_tests_properties(multihost.slurm.${cluster_case} PROPERTIES
    TIMEOUT 240 SKIP_RETURN_CODE 77 PROCESSORS 2 RESOURCE_LOCK lora_cluster
    LABELS "multihost;slurm")
endforeach()
