# Fault probe: rank 1 of a 2-rank job fails before an all-reduce; the job must end non-zero
# within the timeout instead of hanging (see fault_probe.cpp).
add_executable(comm_fault_probe ${CMAKE_CURRENT_LIST_DIR}/fault_probe.cpp)
target_link_libraries(comm_fault_probe PRIVATE lora_comm)
string(REPLACE ";" " " LORA_MPIEXEC_FLAGS_TEXT "${LORA_MPIEXEC_FLAGS}")
foreach(mode_and_pattern "abort|exit code 3$" "throw|aborting the job" "skip|all-reduce of 1 float32 timed out after 2.0 s on rank 0")
  string(FIND "${mode_and_pattern}" "|" bar)
  string(SUBSTRING "${mode_and_pattern}" 0 ${bar} mode)
  math(EXPR after "${bar} + 1")
  string(SUBSTRING "${mode_and_pattern}" ${after} -1 pattern)
  add_test(NAME comm.fault_probe.${mode}
           COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run_fault_probe.sh ${LORA_MPIEXEC}
                   "${LORA_MPIEXEC_FLAGS_TEXT}" $<TARGET_FILE:comm_fault_probe> ${mode} "${pattern}")
  set_tests_properties(comm.fault_probe.${mode} PROPERTIES TIMEOUT 30 PROCESSORS 2)
endforeach()
