#!/usr/bin/env bash
# The sbatch scripts on a real Slurm: starts munged, slurmctld and slurmd for this one machine
# in a temporary directory (tests/slurm/cluster.sh), submits slurm/train-cpu.sbatch and
# slurm/sweep-cpu.sbatch with `sbatch --wait`, checks the results, and stops the daemons on exit
# whatever happens. Cases (one or more, run in order on one cluster):
#
#   train    2-task job, launcher chosen by the script (srun --mpi=pmix here): the final adapters
#            equal those of the same run under `mpirun -np 2` (h5py, within 1e-6)
#   mpirun   the same with LAUNCHER=mpirun: Open MPI's mpirun inside the allocation
#   pmi2     the same with LAUNCHER=srun-pmi2; skipped (exit 77) with the reason when this
#            machine's MPI cannot be started through PMI-2
#   preempt  a 2-task job signalled twice while training, first as the time-limit signal arrives
#            (`scancel --batch --signal=USR1`: the batch shell, which forwards it to srun), then
#            the way a step signal arrives (`scancel --signal=USR1`: srun's tasks directly); each
#            time it must checkpoint, exit 75, requeue itself and resume; the final adapters equal
#            an uninterrupted `mpirun -np 2` run's
#   preempt_mpirun  the same with LAUNCHER=mpirun, both signals through the batch shell (which
#            forwards SIGUSR1 to mpirun, which forwards it to the ranks)
#   cancel   `scancel JOB` while training: lora checkpoints on SIGTERM and exits 75, and the
#            script must not requeue a job that is being cancelled
#   sweep    a 3-point job array of `lora sweep --only I`; skipped (exit 77) if the lora binary
#            has no sweep subcommand
#
# Exit codes: 0 passed, 1 failed, 77 skipped (CTest's SKIP_RETURN_CODE), with the reason printed.
# Set LORA_SLURM_KEEP=1 to keep the temporary directory (configs, runs, job and daemon logs).
#
# usage: run_slurm_tests.sh LORA_BINARY SOURCE_DIR MPIEXEC PYTHON CASE...
set -uo pipefail

lora=${1:?usage: run_slurm_tests.sh LORA_BINARY SOURCE_DIR MPIEXEC PYTHON CASE...}
src=${2:?}
mpiexec=${3:?}
python=${4:?}
shift 4
cases=("$@")
((${#cases[@]})) || { echo "no case given"; exit 2; }
readonly kSkip=77
# No sbatch --wait may take longer (CTest's TIMEOUT is 300 s: stopping here first lets the EXIT
# trap stop the daemons; a job that can never start would otherwise hang until then).
readonly kJobTimeout=180

skip() { echo "SKIPPED: $*"; exit "$kSkip"; }
fail() { echo "FAILED: $*"; exit 1; }

# ---- preconditions: what this machine must have -------------------------------------------------
for tool in munged slurmctld slurmd sbatch srun scontrol scancel squeue sinfo; do
  command -v "$tool" >/dev/null || skip "$tool not found: Slurm and munge are not installed (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"
done
[[ $(id -u) -eq 0 ]] || skip "slurmd must run as root to start jobs, and this test runs as uid $(id -u)"
[[ -x $lora ]] || fail "no lora binary at $lora"
lora=$(readlink -f "$lora")
src=$(readlink -f "$src")
n_cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
((n_cpus >= 2)) || skip "the 2-task jobs need a node with 2 CPUs and this machine has $n_cpus"

# Jobs must not inherit a surrounding Slurm job's variables (CI could itself run inside one).
while IFS='=' read -r name _; do
  case $name in SLURM_* | SBATCH_* | SRUN_* | SALLOC_* | SQUEUE_* | SCANCEL_*) unset "$name" ;; esac
done < <(env)

# shellcheck source-path=SCRIPTDIR source=cluster.sh
source "$src/tests/slurm/cluster.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/lora-slurm-test.XXXXXX")
chmod 711 "$work"  # munged wants every directory above its socket searchable by all
cleanup() {
  local rc=$?
  slurm_cluster_stop
  if [[ -n ${LORA_SLURM_KEEP:-} ]]; then
    echo "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

t_start=$SECONDS
elapsed() { echo "$((SECONDS - t_start)) s"; }
# The submit directory: a job log that escaped --output (slurm-<job>.out) lands here, not in the
# directory the test was started from.
cd "$work" || exit 1

# ---- inputs: a small corpus and a tiny model (2 layers, d_model 32, seq 32) -----------------------
"$python" - "$work" <<'EOF'
import sys
subjects = ["the cat", "a dog", "my friend", "the old man", "a bird", "the child", "our teacher", "the sailor"]
verbs = ["sees", "likes", "finds", "paints", "follows", "hears"]
objects = ["the sea", "a red ball", "the moon", "an open door", "the river", "a small house", "the garden"]
x, lines = 12345, []
for _ in range(400):
    x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    lines.append(f"{subjects[(x >> 8) % 8]} {verbs[(x >> 13) % 6]} {objects[(x >> 18) % 7]}.\n")
open(f"{sys.argv[1]}/train.txt", "w").write("".join(lines))
open(f"{sys.argv[1]}/val.txt", "w").write("".join(lines[:80]))
EOF
# write_config PATH STEPS: the run's output_dir comes from --set run.output_dir=... at each start.
write_config() {
  cat >"$1" <<EOF
run: {name: slurm-test, output_dir: $work/runs/unset, seed: 7}
model: {arch: gpt2, vocab_size: 256, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32}
lora: {rank: 4, alpha: 8, targets: [attn.qkv, attn.proj, mlp.fc, mlp.proj]}
data: {train: $work/train.txt, val: $work/val.txt, format: text, seq_len: 32}
train: {mode: lora, micro_batch: 4, grad_accum: 1, steps: $2, lr: 0.01, warmup_steps: 1, eval_batches: 2, log_every: 1}
checkpoint: {every: 0, keep: 3}
device: {threads: 1}
EOF
}
mkdir -p "$work/runs" "$work/logs"
write_config "$work/short.yaml" 16
write_config "$work/long.yaml" 1200

# reference CONFIG NAME: the same run under `mpirun -np 2`, outside Slurm.
reference() {
  local dir=$work/runs/$2
  [[ -d $dir ]] && return 0
  timeout 120 "$mpiexec" --oversubscribe --allow-run-as-root --bind-to none -np 2 \
    "$lora" train "$1" --set "run.output_dir=$dir" >"$work/logs/$2.log" 2>&1 ||
    { cat "$work/logs/$2.log"; fail "the mpirun reference run $2 failed"; }
}

# final_checkpoint DIR STEPS: path of the run's checkpoint at the last step; fails if missing.
final_checkpoint() {
  local ckpt=$1/checkpoints/ckpt-$2.h5
  [[ -f $ckpt ]] || { ls -R "$1" >&2 2>/dev/null; fail "no final checkpoint $ckpt" >&2; }
  echo "$ckpt"
}

# submit_train NAME LAUNCHER CONFIG [sbatch options...]: sbatch --wait of train-cpu.sbatch with
# 2 tasks on the node; sets job_rc and job_log.
submit_train() {
  local name=$1 launcher=$2 config=$3
  shift 3
  job_log=$work/logs/$name.out
  CONFIG=$config LORA=$lora LAUNCHER=$launcher EXTRA_ARGS="--set run.output_dir=$work/runs/$name" \
    timeout "$kJobTimeout" sbatch --wait --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10 \
    --job-name="lora-$name" --output="$job_log" --export=ALL "$@" "$src/slurm/train-cpu.sbatch" \
    >"$work/logs/$name.sbatch" 2>&1
  job_rc=$?
}

show_job() {
  echo "---- jobs"; squeue -o '%i %j %T %r %M' 2>/dev/null
  echo "---- sbatch output"; cat "$work/logs/$1.sbatch" 2>/dev/null
  echo "---- job log"; cat "$job_log" 2>/dev/null
  slurm_cluster_logs
}

# ---- cases ----------------------------------------------------------------------------------------
case_train_with() {  # case_train_with NAME LAUNCHER
  local name=$1 launcher=$2
  reference "$work/short.yaml" ref-short
  submit_train "$name" "$launcher" "$work/short.yaml"
  if ((job_rc != 0)); then
    if [[ $launcher == srun-pmi2 ]] && grep -q "OMPI was not built with SLURM's PMI support" "$job_log"; then
      skip "srun --mpi=pmi2 cannot start this machine's Open MPI: its ranks abort in MPI_Init with \"OMPI was not built with SLURM's PMI support\" (Open MPI $(ompi_info --version 2>/dev/null | sed -n 's/.*v\([0-9.]*\).*/\1/p' | head -n 1) has PMIx components only, no PMI-1/2 client; use srun --mpi=pmix or mpirun)"
    fi
    show_job "$name"
    fail "$name: the job exited $job_rc"
  fi
  grep -q "starting: ${launcher/srun-/srun --mpi=}" "$job_log" || { show_job "$name"; fail "$name: the job did not use $launcher"; }
  local ranks_line
  ranks_line=$(grep -m1 -E "^lora: (srun|mpirun) rank 0/2" "$job_log") ||
    { show_job "$name"; fail "$name: lora did not run as 2 ranks"; }
  local ckpt ref
  ckpt=$(final_checkpoint "$work/runs/$name" 16) || { show_job "$name"; exit 1; }
  ref=$(final_checkpoint "$work/runs/ref-short" 16) || exit 1
  "$python" "$src/tests/slurm/compare_adapters.py" "$ckpt" "$ref" ||
    fail "$name: adapters differ from mpirun -np 2"
  echo "PASS $name ($launcher; $ranks_line) at $(elapsed)"
}

case_train() {
  local plugins
  plugins=$(srun --mpi=list 2>&1)
  echo "srun --mpi=list: $(tr -s '\n\t ' ' ' <<<"$plugins")"
  grep -qw pmix <<<"$plugins" || skip "srun offers no pmix plugin, so the script's automatic choice is not srun --mpi=pmix here"
  case_train_with train-srun srun-pmix
}

case_mpirun() { case_train_with train-mpirun mpirun; }

case_pmi2() {
  srun --mpi=list 2>&1 | grep -qw pmi2 || skip "srun offers no pmi2 plugin"
  case_train_with train-pmi2 srun-pmi2
}

# last_step RUN_DIR: the newest step in the run's metrics.jsonl (0 when none yet).
last_step() {
  local line
  line=$(tail -n 1 "$1/metrics.jsonl" 2>/dev/null)
  [[ $line =~ \"step\":\ *([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

# wait_for_step RUN_DIR STEP: polls until the run has logged STEP; fails when the job ended
# (sbatch --wait, pid sbatch_pid, returned) or after 120 s.
wait_for_step() {
  local s
  for _ in $(seq 1 2400); do
    s=$(last_step "$1")
    ((s >= $2)) && return 0
    kill -0 "$sbatch_pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# case_preempt_with NAME LAUNCHER SECOND: the second signal goes to the job steps (SECOND=steps,
# `scancel --signal=USR1`) or again to the batch shell (SECOND=batch, `scancel --batch`).
# Submits the long training job NAME (output dir RUN, launcher LAUNCHER) with `sbatch --wait` in
# the background; sets job_log, sbatch_pid and job_id.
submit_long_job() {
  local name=$1 run=$2 launcher=$3
  job_log=$work/logs/$name.out
  CONFIG=$work/long.yaml LORA=$lora LAUNCHER=$launcher EXTRA_ARGS="--set run.output_dir=$run" MAX_RESTARTS=3 \
    timeout "$kJobTimeout" sbatch --wait --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=10 \
    --job-name="lora-$name" --output="$job_log" --export=ALL "$src/slurm/train-cpu.sbatch" \
    >"$work/logs/$name.sbatch" 2>&1 &
  sbatch_pid=$!
  job_id=""
  for _ in $(seq 1 200); do
    job_id=$(grep -m1 -E '^[0-9]+' "$work/logs/$name.sbatch" 2>/dev/null | cut -d';' -f1)
    [[ -n $job_id ]] && break
    sleep 0.05
  done
  [[ -n $job_id ]] || { show_job "$name"; fail "$name: no job id from sbatch"; }
}

case_preempt_with() {
  local name=$1 launcher=$2 second=$3 steps=1200
  local run=$work/runs/$name
  reference "$work/long.yaml" ref-long
  submit_long_job "$name" "$run" "$launcher"

  # 1: the batch shell gets SIGUSR1, as with #SBATCH --signal=B:USR1@90 at the time limit.
  wait_for_step "$run" 5 || { show_job "$name"; fail "$name: the job never reached step 5"; }
  local at1
  at1=$(last_step "$run")
  scancel --batch --signal=USR1 "$job_id" || fail "$name: scancel --batch failed"
  echo "signalled the batch shell of job $job_id at step $at1 ($(elapsed))"

  # 2: after the requeue, SIGUSR1 straight to the ranks (srun's tasks) or through the shell again.
  local restarted=""
  for _ in $(seq 1 1200); do
    grep -q "restart 1\]: starting" "$job_log" 2>/dev/null && { restarted=1; break; }
    kill -0 "$sbatch_pid" 2>/dev/null || break
    sleep 0.05
  done
  [[ -n $restarted ]] || { wait "$sbatch_pid"; show_job "$name"; fail "$name: the job did not restart after the first signal"; }
  local resumed
  for _ in $(seq 1 600); do
    resumed=$(sed -n 's/.*resume: from .*ckpt-\([0-9]*\)\.h5 at step.*/\1/p' "$job_log" | sed -n 1p)
    [[ -n $resumed ]] && break
    sleep 0.05
  done
  [[ -n $resumed ]] || { show_job "$name"; fail "$name: the restarted job did not resume from a checkpoint"; }
  wait_for_step "$run" $((resumed + 5)) || { show_job "$name"; fail "$name: the restarted job never trained past step $((resumed + 5))"; }
  local at2
  at2=$(last_step "$run")
  if [[ $second == steps ]]; then
    scancel --signal=USR1 "$job_id" || fail "$name: scancel --signal=USR1 failed"
    echo "signalled the steps of job $job_id at step $at2 ($(elapsed))"
  else
    scancel --batch --signal=USR1 "$job_id" || fail "$name: scancel --batch failed"
    echo "signalled the batch shell of job $job_id at step $at2 ($(elapsed))"
  fi

  wait "$sbatch_pid"
  local rc=$?
  ((rc == 0)) || { show_job "$name"; fail "$name: sbatch --wait returned $rc"; }

  # The log tells the story: two stops with exit 75, two requeues, two resumes, then done.
  # "restart N" in the script's lines is SLURM_RESTART_COUNT as the job saw it.
  local n_requeues n_resumes
  n_requeues=$(grep -c "stopped after a checkpoint (exit 75): requeueing" "$job_log")
  n_resumes=$(grep -c "resume: from .*ckpt-" "$job_log")
  if [[ $n_requeues != 2 || $n_resumes != 2 ]] || ! grep -q "restart 2\]: finished" "$job_log"; then
    show_job "$name"
    fail "$name: expected 2 requeues, 2 resumes and a finish at SLURM_RESTART_COUNT=2; got $n_requeues requeues, $n_resumes resumes"
  fi
  local resumed2
  resumed2=$(sed -n 's/.*resume: from .*ckpt-\([0-9]*\)\.h5 at step.*/\1/p' "$job_log" | sed -n 2p)
  ((resumed > 0 && resumed < resumed2 && resumed2 < steps)) ||
    { show_job "$name"; fail "$name: resumed at steps $resumed and $resumed2, expected 0 < first < second < $steps"; }
  local ckpt ref
  ckpt=$(final_checkpoint "$run" $steps) || { show_job "$name"; exit 1; }
  ref=$(final_checkpoint "$work/runs/ref-long" $steps) || exit 1
  "$python" "$src/tests/slurm/compare_adapters.py" "$ckpt" "$ref" ||
    fail "$name: adapters after two preemptions differ from an uninterrupted mpirun -np 2 run"
  grep -q "starting: ${launcher/srun-/srun --mpi=}" "$job_log" || { show_job "$name"; fail "$name: the job did not use $launcher"; }
  echo "PASS $name ($launcher: stopped at steps $resumed and $resumed2, requeued twice, resumed, finished at $steps) at $(elapsed)"
}

case_preempt() { case_preempt_with preempt srun-pmix steps; }

case_cancel() {
  local name=cancel steps=1200
  local run=$work/runs/$name
  submit_long_job "$name" "$run" auto
  wait_for_step "$run" 5 || { show_job "$name"; fail "$name: the job never reached step 5"; }
  scancel "$job_id" || fail "$name: scancel failed"
  echo "cancelled job $job_id at step $(last_step "$run") ($(elapsed))"
  # sbatch --wait returns once the job is final: it would go on waiting through a requeue.
  wait "$sbatch_pid"
  local rc=$? stopped
  stopped=$(sed -n 's/.*lora: done at step \([0-9]*\) .*/\1/p' "$job_log" | head -n 1)
  if ((rc == 0)) || [[ -z $stopped ]] || ((stopped >= steps)) ||
    ! grep -q "stopped by signal 15 after a checkpoint" "$job_log" ||
    ! grep -q "not requeueing" "$job_log" || grep -q "restart 1\]" "$job_log" ||
    [[ ! -f $run/checkpoints/ckpt-$stopped.h5 ]]; then
    show_job "$name"
    fail "$name: expected SIGTERM -> checkpoint -> exit 75 -> no requeue, the job staying cancelled (sbatch --wait returned $rc)"
  fi
  echo "PASS $name (SIGTERM, checkpoint at step $stopped, exit 75, not requeued; sbatch --wait returned $rc) at $(elapsed)"
}
case_preempt_mpirun() { case_preempt_with preempt-mpirun mpirun batch; }

# Checked before the cluster starts.
precheck_sweep() {
  if ! "$lora" sweep --help 2>&1 | grep -q -- "--only" || ! "$lora" sweep --help >/dev/null 2>&1; then
    skip "this lora binary has no 'sweep' subcommand with --only yet ('$lora sweep --help' does not describe it)"
  fi
}

case_sweep() {
  # The sweep file: three LoRA ranks over the short config.
  cat >"$work/sweep.yaml" <<EOF
base: $work/short.yaml
output_dir: $work/runs/sweep
grid:
  lora.rank: [2, 4, 8]
EOF
  local listing
  listing=$("$lora" sweep "$work/sweep.yaml" --list) || fail "sweep: lora sweep --list failed on $work/sweep.yaml"
  echo "$listing"
  local n_points
  n_points=$(grep -c -P '^\d+\t' <<<"$listing")
  ((n_points == 3)) || fail "sweep: expected 3 points from --list, got $n_points"
  job_log=$work/logs/sweep-%A_%a.out
  SWEEP=$work/sweep.yaml LORA=$lora \
    timeout "$kJobTimeout" sbatch --wait --array=0-2%2 --nodes=1 --ntasks-per-node=1 --cpus-per-task=1 --time=10 \
    --job-name=lora-sweep --output="$job_log" --export=ALL "$src/slurm/sweep-cpu.sbatch" \
    >"$work/logs/sweep.sbatch" 2>&1 ||
    { cat "$work/logs/sweep.sbatch" "$work"/logs/sweep-*.out; fail "sweep: the array job failed"; }
  local index dir settings kv
  while IFS=$'\t' read -r index dir settings; do
    [[ $index =~ ^[0-9]+$ ]] || continue
    final_checkpoint "$dir" 16 >/dev/null || exit 1
    for kv in $settings; do
      local key=${kv%%=*} value=${kv#*=}
      grep -q -E "(^|[ {,])${key##*.}: *${value}([,} ]|\$)" "$dir/config.yaml" ||
        fail "sweep: point $index ($dir) config.yaml lacks ${key##*.}: $value"
    done
  done <<<"$listing"
  echo "PASS sweep (3 points as a job array, each finished in its own directory) at $(elapsed)"
}

# ---- run ------------------------------------------------------------------------------------------
for c in "${cases[@]}"; do
  declare -F "case_$c" >/dev/null || { echo "unknown case '$c'"; exit 2; }
  if declare -F "precheck_$c" >/dev/null; then "precheck_$c"; fi
done
slurm_cluster_start "$work/cluster" || fail "could not start a one-node Slurm cluster (logs above)"
echo "one-node Slurm cluster up ($(sinfo -h -o '%P %D %t %c CPUs') $(sbatch --version)) at $(elapsed)"
for c in "${cases[@]}"; do
  "case_$c"
done
echo "all cases passed in $(elapsed)"
