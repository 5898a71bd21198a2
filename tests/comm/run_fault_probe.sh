#!/bin/sh
# Runs the fault probe under mpirun -np 2 and passes when the job ends non-zero within the time
# limit (124 from timeout means it hung) and its output, followed by a line "exit code N", matches
# the expected pattern (mpirun's own banners are not reliable enough to match on).
# usage: run_fault_probe.sh MPIEXEC "MPIEXEC_FLAGS" PROBE MODE PATTERN
mpiexec=$1; flags=$2; probe=$3; mode=$4; pattern=$5
out=$(timeout 25 "$mpiexec" $flags -np 2 "$probe" "$mode" 2>&1)
rc=$?
out=$(printf '%s\nexit code %s' "$out" "$rc")
printf '%s\n' "$out"
if [ "$rc" -eq 124 ]; then echo "FAIL: the job hung (killed after 25 s)"; exit 1; fi
if [ "$rc" -eq 0 ]; then echo "FAIL: the job exited 0 although rank 1 failed"; exit 1; fi
if ! printf '%s\n' "$out" | grep -Eq "$pattern"; then echo "FAIL: no output matching '$pattern'"; exit 1; fi
echo "PASS: the job ended with exit code $rc"
