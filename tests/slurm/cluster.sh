# A real one-machine Slurm cluster in a temporary directory, for tests (sourced, not run).
#
#   slurm_cluster_start DIR   (every directory above DIR must be searchable by all, for munged)
#                             writes a munge key and slurm.conf under DIR, starts munged,
#                             slurmctld and slurmd as root on free ports, exports SLURM_CONF and
#                             waits until the node is idle; returns 1 (logs printed) on failure
#   slurm_cluster_stop        cancels the cluster's jobs and stops the three daemons by their pid
#                             files; safe to call twice and after a partial start
#   slurm_cluster_logs        prints the tail of every daemon log
#
# The node is this machine (NodeName=$(hostname -s), CPUs=nproc, 80% of its memory), in one
# partition "test" (Default, MaxTime=INFINITE). No cgroups (proctrack/linuxproc, task/none), no
# accounting database, JobRequeue=1. cred_expire=5 shortens the wait before a requeued job may
# start again (Slurm's default is 120 s) and sched_interval=1 lets the scheduler notice it quickly;
# MinJobAge=4 keeps `sbatch --wait` polling every 2 s (its interval grows up to MinJobAge/2).
# Debian packages: slurmctld slurmd slurm-client munge (scripts/setup.sh installs them).
# shellcheck shell=bash

slurm_cluster_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

slurm_cluster_logs() {
  local f
  for f in "$SLURM_CLUSTER_DIR"/log/*.log; do
    [[ -f $f ]] || continue
    echo "---- tail of $f"
    tail -n 25 "$f"
  done
}

slurm_cluster_start() {
  local dir=$1
  SLURM_CLUSTER_DIR=$dir
  mkdir -p "$dir"/{munge,state,spool,log}
  # munged insists that every directory above its socket be searchable by all.
  chmod 711 "$dir" "$dir/munge"

  local key=$dir/munge/munge.key
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$key" --bits=1024 || return 1
  else
    dd if=/dev/urandom of="$key" bs=128 count=1 status=none || return 1
  fi
  chmod 400 "$key"
  munged --socket="$dir/munge/munge.socket" --key-file="$key" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" || {
    echo "munged failed to start"; slurm_cluster_logs; return 1
  }

  local node ctld_port slurmd_port mem_mb n_cpus
  node=$(hostname -s)
  ctld_port=$(slurm_cluster_free_port)
  slurmd_port=$(slurm_cluster_free_port)
  while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(slurm_cluster_free_port); done
  mem_mb=$(free -m | awk '/^Mem:/ { print int($2 * 0.8) }')
  # nproc honours OMP_NUM_THREADS, which test runners often set to 1.
  n_cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  cat >"$dir/slurm.conf" <<EOF
ClusterName=loratest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MailProg=/bin/true
KillWait=10
MinJobAge=4
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$n_cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF" || { echo "slurmctld failed to start"; slurm_cluster_logs; return 1; }
  slurmd -f "$SLURM_CONF" || { echo "slurmd failed to start"; slurm_cluster_logs; return 1; }

  local state=""
  for _ in $(seq 1 120); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n 1)
    [[ $state == idle ]] && return 0
    sleep 0.25
  done
  echo "the node did not become idle within 30 s (sinfo state '$state')"
  slurm_cluster_logs
  return 1
}

slurm_cluster_stop() {
  [[ -n ${SLURM_CLUSTER_DIR:-} ]] || return 0
  local dir=$SLURM_CLUSTER_DIR
  if [[ -f $dir/slurmctld.pid ]]; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null
      for _ in $(seq 1 60); do
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.25
      done
    fi
  fi
  # TERM to all three at once (each takes a few seconds to exit), KILL what is left after 10 s.
  local pidfile pid
  local -a pids=()
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile" 2>/dev/null)
    [[ $pid =~ ^[0-9]+$ ]] && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq 1 40); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.25
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  SLURM_CLUSTER_DIR=
}
