#!/usr/bin/env bash
# The sbatch scripts' logic without Slurm: each slurm/*.sbatch runs under plain bash with a fake
# job environment (SLURM_JOB_ID, SLURM_RESTART_COUNT, ...), stub `srun`/`mpirun`/`scontrol` on
# PATH that record their arguments, and a stub `lora` whose exit code (or reaction to SIGUSR1)
# each case chooses. Checked: requeue on exit 75 below MAX_RESTARTS, no requeue at the bound nor
# of a job that is being cancelled, exit 0 on success, other failures propagated, SIGUSR1/SIGTERM
# to the batch shell forwarded to the ranks as SIGUSR1, the launcher chosen from
# `srun --mpi=list`, and the arguments lora gets.
#
# usage: test_requeue_logic.sh SOURCE_DIR
set -uo pipefail

src=${1:?usage: test_requeue_logic.sh SOURCE_DIR}
slurm_dir=$src/slurm
work=$(mktemp -d "${TMPDIR:-/tmp}/lora-requeue-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"

# Stubs. Each appends one line "name args..." to $work/calls.
cat >"$work/bin/scontrol" <<'EOF'
#!/bin/bash
if [[ $1 == show ]]; then echo "JobId=$3 JobName=x"; echo "   JobState=${STUB_JOB_STATE:-RUNNING} Reason=None"; exit 0; fi
echo "scontrol $*" >>"$STUB_DIR/calls"
exit "${STUB_SCONTROL_RC:-0}"
EOF
cat >"$work/bin/srun" <<'EOF'
#!/bin/bash
if [[ $1 == --mpi=list ]]; then printf 'MPI plugin types are...\n'; printf '\t%s\n' $STUB_MPI_PLUGINS; exit 0; fi
echo "srun $*" >>"$STUB_DIR/calls"
while [[ $1 == --* ]]; do shift; done
exec "$@"
EOF
cat >"$work/bin/mpirun" <<'EOF'
#!/bin/bash
echo "mpirun $*" >>"$STUB_DIR/calls"
while [[ $# -gt 0 && $1 != */lora ]]; do shift; done
exec "$@"
EOF
# The stub lora exits with STUB_LORA_RC, or with STUB_LORA_WAIT set waits for SIGUSR1 (exit 75;
# SIGTERM would end it with 143) after writing its pid to $STUB_DIR/lora.pid.
cat >"$work/bin/lora" <<'EOF'
#!/bin/bash
if [[ $1 == sweep && $2 == --help ]]; then echo "lora sweep SWEEP.yaml [--only I] [--list] [--set k=v]"; exit 0; fi
echo "lora $*" >>"$STUB_DIR/calls"
if [[ -n ${STUB_LORA_WAIT:-} ]]; then
  trap 'echo "lora got USR1" >>"$STUB_DIR/calls"; exit 75' USR1
  echo $$ >"$STUB_DIR/lora.pid"
  for _ in $(seq 1 200); do sleep 0.05; done
  exit 99
fi
exit "${STUB_LORA_RC:-0}"
EOF
chmod +x "$work/bin/"*

n_pass=0
n_fail=0
check() {  # check NAME CONDITION_EXIT_CODE MESSAGE
  if [[ $2 -eq 0 ]]; then
    n_pass=$((n_pass + 1))
  else
    n_fail=$((n_fail + 1))
    echo "FAIL: $1: $3"
    echo "  calls:"; sed 's/^/    /' "$work/calls" 2>/dev/null
    echo "  log:"; sed 's/^/    /' "$work/log" 2>/dev/null
  fi
}

# run_script SCRIPT [VAR=value...]: runs the script with a clean fake job environment; sets rc.
run_script() {
  local script=$1
  shift
  : >"$work/calls"
  rm -f "$work/lora.pid"
  env -i PATH="$work/bin:/usr/bin:/bin" HOME="$work" STUB_DIR="$work" \
    SLURM_JOB_ID=1234 SLURM_SUBMIT_DIR="$work" SLURM_NTASKS=2 SLURM_CPUS_PER_TASK=3 \
    LORA_SLURM_DIR="$slurm_dir" LORA="$work/bin/lora" CONFIG=run.yaml SWEEP=sweep.yaml \
    STUB_MPI_PLUGINS="pmix none pmi2" "$@" \
    bash "$slurm_dir/$script" >"$work/log" 2>&1
  rc=$?
}

requeued() { grep -q "^scontrol requeue Incomplete 1234$" "$work/calls"; }
not_requeued() { ! grep -q "^scontrol" "$work/calls"; }

for script in train.sbatch train-cpu.sbatch; do
  run_script "$script" STUB_LORA_RC=0
  [[ $rc -eq 0 ]] && not_requeued
  check "$script success" $? "expected exit 0 and no requeue, got exit $rc"

  run_script "$script" STUB_LORA_RC=75 MAX_RESTARTS=2
  [[ $rc -eq 0 ]] && requeued
  check "$script 75 on first start" $? "expected a requeue and exit 0, got exit $rc"

  run_script "$script" STUB_LORA_RC=75 MAX_RESTARTS=2 SLURM_RESTART_COUNT=1
  [[ $rc -eq 0 ]] && requeued
  check "$script 75 below the bound" $? "expected a requeue and exit 0, got exit $rc"

  run_script "$script" STUB_LORA_RC=75 MAX_RESTARTS=2 SLURM_RESTART_COUNT=2
  [[ $rc -eq 75 ]] && not_requeued
  check "$script 75 at the bound" $? "expected exit 75 and no requeue, got exit $rc"

  run_script "$script" STUB_LORA_RC=75 MAX_RESTARTS=0
  [[ $rc -eq 75 ]] && not_requeued
  check "$script 75 with MAX_RESTARTS=0" $? "expected exit 75 and no requeue, got exit $rc"

  run_script "$script" STUB_LORA_RC=75 STUB_JOB_STATE=COMPLETING
  [[ $rc -eq 75 ]] && not_requeued
  check "$script 75 while cancelled" $? "expected exit 75 and no requeue of a job being cancelled, got exit $rc"

  run_script "$script" STUB_LORA_RC=75 STUB_SCONTROL_RC=1
  [[ $rc -eq 75 ]] && requeued
  check "$script failed requeue" $? "expected exit 75 after a failed requeue, got exit $rc"

  for code in 1 2 134; do
    run_script "$script" STUB_LORA_RC=$code
    [[ $rc -eq $code ]] && not_requeued
    check "$script failure $code" $? "expected exit $code propagated and no requeue, got exit $rc"
  done

  run_script "$script" STUB_LORA_RC=0
  grep -q "^lora train run.yaml --resume auto" "$work/calls"
  check "$script arguments" $? "expected 'lora train run.yaml --resume auto ...'"
done

# The CPU variant runs SLURM_CPUS_PER_TASK threads per rank; the GPU variant sets no device.
run_script train-cpu.sbatch STUB_LORA_RC=0 EXTRA_ARGS="--set train.steps=5"
grep -q -- "--resume auto --set device.backend=cpu --set device.threads=3 --set train.steps=5$" "$work/calls"
check "train-cpu threads" $? "expected device.threads=3 from SLURM_CPUS_PER_TASK and EXTRA_ARGS last"
run_script train.sbatch STUB_LORA_RC=0
! grep -q "device\." "$work/calls"
check "train no device override" $? "the GPU script must not set device.*"

# Launcher choice from `srun --mpi=list`.
run_script train.sbatch STUB_LORA_RC=0
grep -q "^srun --mpi=pmix --ntasks=2 --kill-on-bad-exit=1 --cpus-per-task=3 " "$work/calls"
check "launcher pmix" $? "expected srun --mpi=pmix when pmix is listed"
run_script train.sbatch STUB_LORA_RC=0 STUB_MPI_PLUGINS="none pmi2 cray_shasta"
grep -q "^srun --mpi=pmi2 " "$work/calls"
check "launcher pmi2" $? "expected srun --mpi=pmi2 when only pmi2 is listed"
run_script train.sbatch STUB_LORA_RC=0 STUB_MPI_PLUGINS="none"
grep -q "^mpirun -np 2 --bind-to none" "$work/calls"
check "launcher mpirun" $? "expected mpirun when srun offers neither pmix nor pmi2"
run_script train.sbatch STUB_LORA_RC=0 LAUNCHER=mpirun
grep -q "^mpirun -np 2 " "$work/calls" && ! grep -q "^srun" "$work/calls"
check "launcher forced mpirun" $? "LAUNCHER=mpirun must use mpirun"
run_script train.sbatch STUB_LORA_RC=0 LAUNCHER=bogus
[[ $rc -eq 2 ]] && ! grep -q "^lora" "$work/calls"
check "launcher invalid" $? "LAUNCHER=bogus must exit 2 before starting lora, got exit $rc"

# Sweeps: point I of the array trains `lora sweep SWEEP --only I`.
for script in sweep.sbatch sweep-cpu.sbatch; do
  run_script "$script" STUB_LORA_RC=0 SLURM_ARRAY_TASK_ID=2
  [[ $rc -eq 0 ]] && grep -q "^lora sweep sweep.yaml --only 2" "$work/calls"
  check "$script arguments" $? "expected 'lora sweep sweep.yaml --only 2', exit 0; got exit $rc"
  run_script "$script" STUB_LORA_RC=75 SLURM_ARRAY_TASK_ID=1 SLURM_RESTART_COUNT=1 MAX_RESTARTS=3
  [[ $rc -eq 0 ]] && requeued
  check "$script 75 requeues the point" $? "expected a requeue of job 1234, got exit $rc"
  run_script "$script" STUB_LORA_RC=75 SLURM_ARRAY_TASK_ID=1 SLURM_RESTART_COUNT=3 MAX_RESTARTS=3
  [[ $rc -eq 75 ]] && not_requeued
  check "$script 75 at the bound" $? "expected exit 75, got exit $rc"
  run_script "$script" STUB_LORA_RC=2 SLURM_ARRAY_TASK_ID=0
  [[ $rc -eq 2 ]] && not_requeued
  check "$script failure" $? "expected exit 2, got exit $rc"
  run_script "$script" STUB_LORA_RC=0
  [[ $rc -eq 2 ]] && ! grep -q "^lora" "$work/calls"
  check "$script outside an array" $? "expected exit 2 without SLURM_ARRAY_TASK_ID, got exit $rc"
done
run_script sweep-cpu.sbatch STUB_LORA_RC=0 SLURM_ARRAY_TASK_ID=0
grep -q -- "--only 0 --set device.backend=cpu --set device.threads=3$" "$work/calls"
check "sweep-cpu threads" $? "expected device.threads=3 passed to lora sweep"

# Signals to the batch shell reach the ranks as SIGUSR1 (srun and mpirun paths); lora's exit 75
# then requeues the job.
for launcher in srun-pmix mpirun; do
  for sig in USR1 TERM; do
    : >"$work/calls"
    rm -f "$work/lora.pid"
    env -i PATH="$work/bin:/usr/bin:/bin" HOME="$work" STUB_DIR="$work" \
      SLURM_JOB_ID=1234 SLURM_SUBMIT_DIR="$work" SLURM_NTASKS=2 LORA_SLURM_DIR="$slurm_dir" \
      LORA="$work/bin/lora" CONFIG=run.yaml STUB_LORA_WAIT=1 LAUNCHER=$launcher \
      bash "$slurm_dir/train.sbatch" >"$work/log" 2>&1 &
    shell_pid=$!
    for _ in $(seq 1 100); do [[ -s $work/lora.pid ]] && break; sleep 0.05; done
    kill -"$sig" "$shell_pid"
    wait "$shell_pid"
    rc=$?
    [[ $rc -eq 0 ]] && grep -q "^lora got USR1$" "$work/calls" && requeued
    check "$launcher SIG$sig to the batch shell" $? "expected lora to get SIGUSR1, exit 75, requeue; got exit $rc"
  done
done

echo "requeue logic: $n_pass passed, $n_fail failed"
[[ $n_fail -eq 0 ]]
