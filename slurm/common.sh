# Shared logic of the sbatch scripts in this folder (sourced, not run).
#
# It chooses how to start the ranks inside the allocation, runs `lora` with the preemption signal
# forwarded to it, and turns lora's exit code into the job's fate:
#
#   0           the run finished                         -> the job exits 0
#   75          stopped by SIGUSR1/SIGTERM after writing a checkpoint
#                 the job is not RUNNING (being cancelled) -> the job exits 75
#                 restarts so far < MAX_RESTARTS           -> `scontrol requeue Incomplete
#                                                           $SLURM_JOB_ID`, exit 0; the next
#                                                           start resumes (--resume auto)
#                 restarts so far >= MAX_RESTARTS          -> the job exits 75
#   anything else (1 runtime failure, 2 invalid input, 128+N killed by signal N)
#                                                        -> the job exits with that code
#
# "Restarts so far" is SLURM_RESTART_COUNT, which Slurm sets to the number of times the job has
# been requeued (by this script or by Slurm itself after a node failure); unset on the first start.
#
# Signals. The batch shell traps SIGUSR1 and SIGTERM and forwards SIGUSR1 to the launcher it
# started (srun or mpirun), which forwards it to every rank; lora then stops all ranks at the next
# step boundary, rank 0 writes checkpoints/ckpt-<step>.h5 and every rank exits 75. Forwarding
# SIGUSR1 rather than SIGTERM matters for mpirun, which kills its ranks on SIGTERM but passes
# SIGUSR1 through. Ranks started by srun also receive signals Slurm sends to job steps directly
# (`scancel --signal=USR1 JOB`, `--signal=USR1@T` without "B:", preemption's SIGTERM); lora
# handles a repeated signal like a single one.
#
# Variables read (all optional):
#   MAX_RESTARTS  how many times a job may requeue itself (default 3)
#   LAUNCHER      auto | srun-pmix | srun-pmi2 | mpirun (default auto: srun --mpi=pmix when
#                 `srun --mpi=list` offers pmix, else srun --mpi=pmi2 when it offers pmi2, else
#                 mpirun inside the allocation)
#   SRUN_EXTRA    extra words for srun (e.g. "--cpu-bind=cores"), split on spaces
#   MPIRUN_EXTRA  extra words for mpirun, split on spaces

# shellcheck shell=bash disable=SC2034  # LORA_LAUNCH, LORA_LAUNCHER, LORA_RC are read by the caller

# Prints a line to the job's log, prefixed so it stands out from lora's own output.
lora_slurm_log() {
  echo "lora-slurm[job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}]: $*" >&2
}

# Fills the array LORA_LAUNCH with the command that starts SLURM_NTASKS ranks in this allocation.
lora_slurm_launcher() {
  local choice=${LAUNCHER:-auto}
  local n_tasks=${SLURM_NTASKS:-1}
  if [[ $choice == auto ]]; then
    local plugins
    plugins=$(srun --mpi=list 2>&1 || true)
    if grep -qw 'pmix' <<<"$plugins"; then
      choice=srun-pmix
    elif grep -qw 'pmi2' <<<"$plugins"; then
      choice=srun-pmi2
    else
      choice=mpirun
    fi
  fi
  local -a extra=() words=()
  case $choice in
    srun-pmix | srun-pmi2)
      # srun in Slurm 22.05 does not inherit --cpus-per-task from sbatch: pass it on.
      [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && extra+=("--cpus-per-task=$SLURM_CPUS_PER_TASK")
      read -r -a words <<<"${SRUN_EXTRA:-}"
      extra+=("${words[@]}")
      LORA_LAUNCH=(srun "--mpi=${choice#srun-}" --ntasks="$n_tasks" --kill-on-bad-exit=1 "${extra[@]}")
      ;;
    mpirun)
      # Open MPI's mpirun reads the Slurm allocation itself and starts its daemons with srun.
      [[ $(id -u) -eq 0 ]] && extra+=(--allow-run-as-root)
      read -r -a words <<<"${MPIRUN_EXTRA:-}"
      extra+=("${words[@]}")
      LORA_LAUNCH=(mpirun -np "$n_tasks" --bind-to none "${extra[@]}")
      ;;
    *)
      lora_slurm_log "LAUNCHER must be auto, srun-pmix, srun-pmi2 or mpirun, got '$choice'"
      return 2
      ;;
  esac
  LORA_LAUNCHER=$choice
  lora_slurm_log "nodes ${SLURM_JOB_NODELIST:-?} (batch shell on $(hostname))"
}

# Runs "$@" in the background, forwards SIGUSR1/SIGTERM received by the batch shell to it as
# SIGUSR1, and returns its exit code (also left in LORA_RC).
lora_slurm_run() {
  _lora_child=
  _lora_signalled=0
  _lora_pending=
  trap '_lora_forward USR1' USR1
  trap '_lora_forward TERM' TERM
  "$@" &
  _lora_child=$!
  # A signal that came between the fork and the line above is forwarded now.
  [[ -n $_lora_pending ]] && _lora_forward "$_lora_pending"
  # wait returns 128+N when a trapped signal interrupts it while the child still runs: wait
  # again. A second wait after the child was already collected returns 127: keep the first code.
  local rc='' status
  while :; do
    _lora_signalled=0
    wait "$_lora_child"
    status=$?
    [[ $status -eq 127 && -n $rc ]] && break
    rc=$status
    ((_lora_signalled)) || break
  done
  trap - USR1 TERM
  LORA_RC=$rc
  return "$rc"
}

_lora_forward() {
  _lora_signalled=1
  if [[ -z $_lora_child ]]; then
    _lora_pending=$1
    return
  fi
  if kill -0 "$_lora_child" 2>/dev/null; then
    lora_slurm_log "batch shell got SIG$1: sending SIGUSR1 to pid $_lora_child"
    kill -USR1 "$_lora_child" 2>/dev/null || true
  fi
}

# Ends the job according to lora's exit code (the table at the top of this file). Never returns.
lora_slurm_finish() {
  local rc=$1
  local max_restarts=${MAX_RESTARTS:-3}
  local restarts=${SLURM_RESTART_COUNT:-0}
  case $rc in
    0)
      lora_slurm_log "finished"
      exit 0
      ;;
    75)
      # A job being cancelled (scancel, which sends SIGTERM first) is no longer RUNNING: it must
      # stay cancelled, and a plain `scontrol requeue` would bring it back; "Incomplete" also
      # refuses jobs that are no longer running.
      local state
      state=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -o -m 1 'JobState=[A-Z_]*')
      state=${state#JobState=}
      if [[ $state != RUNNING ]]; then
        lora_slurm_log "stopped after a checkpoint (exit 75) while the job is ${state:-in an unknown state}, not running (cancelled?): not requeueing"
        exit 75
      fi
      if ((restarts < max_restarts)); then
        lora_slurm_log "stopped after a checkpoint (exit 75): requeueing (restart $((restarts + 1)) of at most $max_restarts)"
        if scontrol requeue Incomplete "$SLURM_JOB_ID"; then
          exit 0
        fi
        lora_slurm_log "scontrol requeue $SLURM_JOB_ID failed: the job ends with exit 75"
        exit 75
      fi
      lora_slurm_log "stopped after a checkpoint (exit 75) and the job has restarted $restarts times (MAX_RESTARTS=$max_restarts): not requeueing"
      exit 75
      ;;
    *)
      lora_slurm_log "lora failed with exit code $rc"
      exit "$rc"
      ;;
  esac
}
