# A real Slurm on the test cluster's hosts (sourced, not run; needs cluster.sh's cluster running):
# one slurmctld on node1 and one slurmd per host, each started inside its host's namespaces, so
# Slurm sees three nodes with their own names and addresses (NodeName=nodeN NodeAddr=10.231.0.N).
#
#   slurm_hosts_start DIR   writes a munge key and slurm.conf under DIR, starts munged on node1
#                           (its socket is a file, reachable from every host), slurmctld and the
#                           slurmds, exports SLURM_CONF and waits until every node is idle;
#                           returns 1 (daemon logs printed) on failure
#   slurm_hosts_stop        cancels the jobs and stops the daemons by their pid files
#   slurm_hosts_logs        the tail of every daemon log
#   on_ctl CMD...           runs a Slurm client command (sbatch, squeue, scontrol...) on node1
#
# What several slurmds on one machine need, and why:
# - SlurmdSpoolDir, SlurmdPidFile and SlurmdLogFile carry %n (the node name), and every slurmd is
#   started with -N nodeN: the hosts share one filesystem.
# - TmpFS carries %n too. Slurm's PMIx plugin creates the client directory
#   TmpFS/spmix_appdir_<uid>_<job>.<step> on every node of a step; with the default TmpFS=/tmp the
#   three slurmstepds of a 3-node `srun --mpi=pmix` step collide on one path ("Cannot create
#   directory ... File exists") and the step fails to launch.
# - No cgroups (proctrack/linuxproc, task/none): the hosts share one cgroup hierarchy.
# - Ports are the defaults (6817/6818) on the cluster's own addresses: no other Slurm on this
#   machine (the one-node test's listens on 127.0.0.1 of the machine's namespace) can collide.
# Debian packages: slurmctld slurmd slurm-client munge (scripts/setup.sh installs them).
# shellcheck shell=bash

slurm_hosts_logs() {
  local f
  for f in "$SLURM_HOSTS_DIR"/log/*.log; do
    [[ -f $f ]] || continue
    echo "---- tail of $f"
    tail -n 25 "$f"
  done
}

on_ctl() { on_host node1 "$@"; }

slurm_hosts_start() {
  local dir=$1 host
  SLURM_HOSTS_DIR=$dir
  mkdir -p "$dir"/{munge,state,log}
  chmod 711 "$dir" "$dir/munge"  # munged wants every directory above its socket searchable by all
  local key=$dir/munge/munge.key
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$key" --bits=1024 || return 1
  else
    dd if=/dev/urandom of="$key" bs=128 count=1 status=none || return 1
  fi
  chmod 400 "$key"
  # Inside node1's namespaces like the other daemons, so that removing the cluster ends it too.
  on_host node1 munged --socket="$dir/munge/munge.socket" --key-file="$key" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" ||
    { echo "munged failed to start"; slurm_hosts_logs; return 1; }

  local nodes=""
  for host in "${CLUSTER_HOSTS[@]}"; do
    mkdir -p "$dir/spool/$host" "$dir/tmp/$host"
    nodes+="NodeName=$host NodeAddr=$(host_addr "$host") CPUs=2 RealMemory=2000 State=UNKNOWN"$'\n'
  done
  cat >"$dir/slurm.conf" <<EOF
ClusterName=loramultihost
SlurmctldHost=node1($(host_addr node1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
TmpFS=$dir/tmp/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
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
${nodes}PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  export SLURM_CONF=$dir/slurm.conf
  on_host node1 slurmctld -f "$SLURM_CONF" || { echo "slurmctld failed to start"; slurm_hosts_logs; return 1; }
  for host in "${CLUSTER_HOSTS[@]}"; do
    on_host "$host" slurmd -f "$SLURM_CONF" -N "$host" || { echo "slurmd on $host failed to start"; slurm_hosts_logs; return 1; }
  done
  local states=""
  for _ in $(seq 1 120); do
    states=$(on_ctl sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ')
    [[ $(grep -o '=idle' <<<"$states" | wc -l) -eq ${#CLUSTER_HOSTS[@]} ]] && return 0
    sleep 0.25
  done
  echo "the nodes did not all become idle within 30 s (sinfo: $states)"
  slurm_hosts_logs
  return 1
}

slurm_hosts_stop() {
  [[ -n ${SLURM_HOSTS_DIR:-} ]] || return 0
  local dir=$SLURM_HOSTS_DIR pidfile pid
  if [[ -f $dir/slurmctld.pid ]]; then
    local jobs
    jobs=$(on_ctl squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      # shellcheck disable=SC2086
      on_ctl scancel $jobs 2>/dev/null
      for _ in $(seq 1 60); do
        [[ -z $(on_ctl squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.25
      done
    fi
  fi
  local -a pids=()
  for pidfile in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
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
  SLURM_HOSTS_DIR=
}
