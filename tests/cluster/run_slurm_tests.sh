#!/usr/bin/env bash
# slurm/train-cpu.sbatch and slurm/sweep-cpu.sbatch as true multi-node jobs: a 3-host test cluster
# (tests/cluster/cluster.sh) runs one slurmctld (node1) and one slurmd per host
# (tests/cluster/slurm_hosts.sh). Jobs are submitted on node1 with `sbatch --wait`; their logs and
# runs stay in the test's temporary directory (the submit directory too). Ranks on different hosts
# talk over TCP only (OMPI_MCA_btl=tcp,self). Cases (one or more, in order, on one cluster):
#
#   train    a 3-node job, one rank per node, launcher chosen by the script (srun --mpi=pmix
#            here): the final adapters equal those of the same run under mpirun across the three
#            hosts (h5py, within 1e-5), and every host's link carried the gradient traffic
#   mpirun   the same job with LAUNCHER=mpirun: Open MPI's mpirun inside the allocation starts its
#            daemons on node2 and node3 through Slurm
#   preempt  a 3-node job signalled through the batch shell (`scancel --batch --signal=USR1`, what
#            the time-limit signal does) while training: it must checkpoint, exit 75, requeue,
#            resume (--resume auto) and finish with the adapters of an uninterrupted mpirun run
#   sweep    a 3-point job array of `lora sweep --only I`, one node per point (--exclusive): every
#            point finishes, and the points ran on three different nodes
#   srun_kill  srun of a 3-node job gets SIGKILL while training: within 30 s no lora process may be
#            left on any host; the time to exit is printed
#
# Exit codes: 0 passed, 1 failed, 77 skipped (no namespaces, no Slurm, not root), reason printed.
# Set LORA_CLUSTER_KEEP=1 to keep the temporary directory (configs, runs, job and daemon logs).
#
# usage: run_slurm_tests.sh LORA_BINARY SOURCE_DIR PYTHON CASE...
set -uo pipefail

lora=${1:?usage: run_slurm_tests.sh LORA_BINARY SOURCE_DIR PYTHON CASE...}
src=${2:?}
python=${3:?}
shift 3
cases=("$@")
((${#cases[@]})) || { echo "no case given"; exit 2; }
for c in "${cases[@]}"; do
  [[ $c =~ ^(train|mpirun|preempt|sweep|srun_kill)$ ]] ||
    { echo "unknown case '$c' (expected train, mpirun, preempt, sweep, srun_kill)"; exit 2; }
done
# No sbatch --wait may take longer (CTest's TIMEOUT is 240 s: stopping first lets the EXIT trap
# stop the daemons and the cluster).
readonly kJobTimeout=120

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$src/tests/cluster/common.sh"
for tool in munged slurmctld slurmd sbatch srun scontrol scancel squeue sinfo; do
  command -v "$tool" >/dev/null || skip "$tool not found: Slurm and munge are not installed (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"
done
# Jobs must not inherit a surrounding Slurm job's variables (CI could itself run inside one).
while IFS='=' read -r name _; do
  case $name in SLURM_* | SBATCH_* | SRUN_* | SALLOC_* | SQUEUE_* | SCANCEL_*) unset "$name" ;; esac
done < <(env)
# shellcheck source-path=SCRIPTDIR source=slurm_hosts.sh
source "$src/tests/cluster/slurm_hosts.sh"
cluster_test_extra_cleanup() { slurm_hosts_stop; }
cluster_test_begin 3
cluster_mpirun_args
slurm_hosts_start "$work/slurm" || fail "could not start Slurm on the three hosts (logs above)"
echo "Slurm up: $(on_ctl sinfo -h -N -o '%N %t %c' | tr '\n' ' ') ($(sbatch --version)) at $(elapsed)"
cd "$work" || exit 1  # the submit directory: a job log without --output would land here

# What every job gets: the TCP-only MPI settings, on the cluster's network.
export OMPI_MCA_btl=tcp,self OMPI_MCA_pml=ob1 OMPI_MCA_btl_tcp_if_include=$LORA_CLUSTER_NET.0/24 \
  OMPI_MCA_oob_tcp_if_include=$LORA_CLUSTER_NET.0/24 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

write_config "$work/short.yaml" steps=16
write_config "$work/long.yaml" steps=600 every=0

# reference CONFIG NAME: the same run under mpirun across the three hosts, outside Slurm.
reference() {
  local dir=$work/runs/$2
  [[ -d $dir ]] && return 0
  write_hostfile 1 node1 node2 node3
  on_host node1 timeout 120 mpirun "${MPIRUN_ARGS[@]}" -np 3 "$lora" train "$1" --set "run.output_dir=$dir" \
    >"$work/logs/$2.log" 2>&1 || { cat "$work/logs/$2.log"; fail "the mpirun reference run $2 failed"; }
}

final_checkpoint() {
  local ckpt=$1/checkpoints/ckpt-$2.h5
  [[ -f $ckpt ]] || { ls -R "$1" >&2 2>/dev/null; echo "no final checkpoint $ckpt" >&2; return 1; }
  echo "$ckpt"
}

show_job() {
  echo "---- jobs"; on_ctl squeue -o '%i %j %T %r %M %N' 2>/dev/null
  echo "---- sbatch output"; cat "$work/logs/$1.sbatch" 2>/dev/null
  echo "---- job log"; cat "$job_log" 2>/dev/null
  slurm_hosts_logs
}

all_link_bytes() {
  local h
  for h in "${CLUSTER_HOSTS[@]}"; do echo "$h $(link_bytes "$h")"; done
}

links_carried() {  # links_carried BEFORE AFTER MIN
  local host rx0 tx0 rx1 tx1
  while read -r host rx0 tx0 && read -r _ rx1 tx1 <&3; do
    ((rx1 - rx0 >= $3 && tx1 - tx0 >= $3)) ||
      { echo "$host's link moved rx $((rx1 - rx0)) tx $((tx1 - tx0)) bytes, expected at least $3 each way"; return 1; }
  done < <(echo "$1") 3< <(echo "$2")
}

# submit_train NAME LAUNCHER CONFIG [sbatch options...]: sbatch --wait of train-cpu.sbatch on 3
# nodes, one rank each; sets job_rc and job_log.
submit_train() {
  local name=$1 launcher=$2 config=$3
  shift 3
  job_log=$work/logs/$name.out
  on_ctl env CONFIG="$config" LORA="$lora" LAUNCHER="$launcher" EXTRA_ARGS="--set run.output_dir=$work/runs/$name" \
    timeout "$kJobTimeout" sbatch --wait --nodes=3 --ntasks-per-node=1 --cpus-per-task=1 --time=10 \
    --job-name="lora-$name" --output="$job_log" --export=ALL "$@" "$src/slurm/train-cpu.sbatch" \
    >"$work/logs/$name.sbatch" 2>&1
  job_rc=$?
}

case_train_with() {  # case_train_with NAME LAUNCHER EXPECTED_LAUNCH_WORDS
  local name=$1 launcher=$2 words=$3
  reference "$work/short.yaml" ref-short
  local before after
  before=$(all_link_bytes)
  submit_train "$name" "$launcher" "$work/short.yaml"
  after=$(all_link_bytes)
  ((job_rc == 0)) || { show_job "$name"; fail "$name: the job exited $job_rc"; }
  grep -q "starting: $words" "$job_log" || { show_job "$name"; fail "$name: the job did not start with '$words'"; }
  grep -q "nodes node\[1-3\]" "$job_log" || { show_job "$name"; fail "$name: the job did not get node[1-3]"; }
  grep -q -E "^lora: (srun|mpirun) rank 0/3 \(local 0/1\) on node1" "$job_log" ||
    { show_job "$name"; fail "$name: lora did not run as 3 ranks, one per node"; }
  # 16 steps x 16 KiB of gradients: a ring moves 4/3 of that over each link; ask for half of it.
  links_carried "$before" "$after" $((16 * 16384 * 2 / 3)) || fail "$name: the ranks did not talk across every link"
  local ckpt ref
  ckpt=$(final_checkpoint "$work/runs/$name" 16) || { show_job "$name"; fail "$name: no final checkpoint"; }
  ref=$(final_checkpoint "$work/runs/ref-short" 16) || fail "no reference checkpoint"
  compare_adapters "$ckpt" "$ref" 1e-5 || fail "$name: adapters differ from mpirun across the three hosts"
  echo "PASS $name (3 nodes x 1 rank through '$words' = mpirun across the hosts) at $(elapsed)"
}

case_train() {
  on_ctl srun --mpi=list 2>&1 | grep -qw pmix || skip "srun offers no pmix plugin here"
  case_train_with train-srun auto "srun --mpi=pmix"
}

case_mpirun() { case_train_with train-mpirun mpirun "mpirun -np 3"; }

# submit_long NAME LAUNCHER: the long job in the background; sets job_log, sbatch_pid, job_id.
submit_long() {
  local name=$1 launcher=$2
  job_log=$work/logs/$name.out
  on_ctl env CONFIG="$work/long.yaml" LORA="$lora" LAUNCHER="$launcher" MAX_RESTARTS=3 \
    EXTRA_ARGS="--set run.output_dir=$work/runs/$name" \
    timeout "$kJobTimeout" sbatch --wait --parsable --nodes=3 --ntasks-per-node=1 --cpus-per-task=1 --time=10 \
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

case_preempt() {
  local name=preempt steps=600 run=$work/runs/preempt
  reference "$work/long.yaml" ref-long
  submit_long "$name" auto
  wait_for_step "$run" 5 "$sbatch_pid" || { show_job "$name"; fail "$name: the job never reached step 5"; }
  local at
  at=$(last_step "$run")
  on_ctl scancel --batch --signal=USR1 "$job_id" || fail "$name: scancel --batch failed"
  echo "signalled the batch shell of job $job_id at step $at ($(elapsed))"
  wait "$sbatch_pid"
  local rc=$?
  ((rc == 0)) || { show_job "$name"; fail "$name: sbatch --wait returned $rc"; }
  local resumed
  resumed=$(sed -n 's/.*resume: from .*ckpt-\([0-9]*\)\.h5 at step.*/\1/p' "$job_log" | head -n 1)
  if ! grep -q "stopped after a checkpoint (exit 75): requeueing" "$job_log" || [[ -z $resumed ]] ||
    ((resumed <= 0 || resumed >= steps)) || ! grep -q "restart 1\]: finished" "$job_log"; then
    show_job "$name"
    fail "$name: expected a stop with exit 75, a requeue, a resume before step $steps and a finish at SLURM_RESTART_COUNT=1"
  fi
  [[ $(grep -c "nodes node\[1-3\]" "$job_log") -eq 2 ]] || { show_job "$name"; fail "$name: both starts must run on node[1-3]"; }
  local ckpt ref
  ckpt=$(final_checkpoint "$run" $steps) || { show_job "$name"; fail "$name: no final checkpoint"; }
  ref=$(final_checkpoint "$work/runs/ref-long" $steps) || fail "no reference checkpoint"
  compare_adapters "$ckpt" "$ref" 1e-5 ||
    fail "$name: adapters after preemption differ from an uninterrupted mpirun run across the hosts"
  echo "PASS preempt (3 nodes: stopped at step $resumed, requeued, resumed, finished at $steps) at $(elapsed)"
}

case_sweep() {
  cat >"$work/sweep.yaml" <<EOF
base: $work/short.yaml
output_dir: $work/runs/sweep
grid:
  lora.rank: [2, 4, 8]
EOF
  local listing
  listing=$("$lora" sweep "$work/sweep.yaml" --list) || fail "sweep: lora sweep --list failed"
  [[ $(grep -c -P '^\d+\t' <<<"$listing") -eq 3 ]] || fail "sweep: expected 3 points from --list"
  job_log=$work/logs/sweep-%A_%a.out
  on_ctl env SWEEP="$work/sweep.yaml" LORA="$lora" \
    timeout "$kJobTimeout" sbatch --wait --array=0-2 --nodes=1 --ntasks-per-node=1 --cpus-per-task=1 \
    --exclusive --time=10 --job-name=lora-sweep --output="$job_log" --export=ALL "$src/slurm/sweep-cpu.sbatch" \
    >"$work/logs/sweep.sbatch" 2>&1 ||
    { cat "$work/logs/sweep.sbatch" "$work"/logs/sweep-*.out; fail "sweep: the array job failed"; }
  local index dir settings
  while IFS=$'\t' read -r index dir settings; do
    [[ $index =~ ^[0-9]+$ ]] || continue
    final_checkpoint "$dir" 16 >/dev/null || fail "sweep: point $index ($settings) did not finish"
  done <<<"$listing"
  local nodes
  nodes=$(sed -n 's/.*: nodes \(node[0-9]*\) .*/\1/p' "$work"/logs/sweep-*.out | sort -u | tr '\n' ' ')
  [[ $(wc -w <<<"$nodes") -eq 3 ]] ||
    { cat "$work"/logs/sweep-*.out; fail "sweep: the 3 points ran on '$nodes', expected three different nodes"; }
  echo "PASS sweep (3 points as a job array, one per node: $nodes) at $(elapsed)"
}

case_srun_kill() {
  local name=srun-kill run=$work/runs/srun-kill
  submit_long "$name" srun-pmix
  wait_for_step "$run" 5 "$sbatch_pid" || { show_job "$name"; fail "$name: the job never reached step 5"; }
  local pid srun_pid=""
  # srun forks a shepherd (also named srun) that cancels the step if srun dies: kill srun itself.
  for pid in $(host_pids node1); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == srun ]] || continue
    [[ $(cat "/proc/$(ps -o ppid= -p "$pid" | tr -d ' ')/comm" 2>/dev/null) == srun ]] && continue
    srun_pid=$pid
  done
  [[ -n $srun_pid ]] || { show_job "$name"; fail "$name: no srun process on node1"; }
  local t0 host t
  t0=$(now_ms)
  kill -KILL "$srun_pid"
  echo "killed srun (pid $srun_pid) of job $job_id at step $(last_step "$run")"
  declare -A gone=()
  local n_gone=0
  while ((n_gone < ${#CLUSTER_HOSTS[@]})); do
    t=$(($(now_ms) - t0))
    n_gone=0
    for host in "${CLUSTER_HOSTS[@]}"; do
      [[ -z ${gone[$host]:-} && -z $(host_lora_pids "$host") ]] && gone[$host]=$t
      [[ -n ${gone[$host]:-} ]] && n_gone=$((n_gone + 1))
    done
    ((t > 40000)) && break
    sleep 0.1
  done
  wait "$sbatch_pid"
  local rc=$? line="time to exit after killing srun:"
  for host in "${CLUSTER_HOSTS[@]}"; do line+=" $host's lora ${gone[$host]:-never}${gone[$host]:+ ms},"; done
  echo "$line job ended with sbatch --wait returning $rc"
  for host in "${CLUSTER_HOSTS[@]}"; do
    [[ -n ${gone[$host]:-} ]] && ((gone[$host] <= 30000)) ||
      { show_job "$name"; fail "$name: an orphaned lora process still ran on $host 30 s after srun was killed"; }
  done
  echo "PASS srun_kill at $(elapsed)"
}

for c in "${cases[@]}"; do
  "case_$c"
done
echo "all cases passed in $(elapsed)"
