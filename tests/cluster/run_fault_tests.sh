#!/usr/bin/env bash
# Faults on the 3-host test cluster (tests/cluster/cluster.sh), with mpirun across the hosts: the job
# must end, never hang, and a resumed run on the hosts that are left must finish as if nothing had
# happened. Every time-to-exit is measured from the fault and printed ("time to exit"). Cases:
#
#   link_cut   3 hosts x 1 rank train with comm.timeout_s 5 and Open MPI's default settings; at
#              step >= 25 node3's eth0 goes down (a cut cable). Every lora process on every host
#              must end within timeout_s + 15 s; each rank's own log (mpirun --output-filename,
#              written on its host) must end with an error, and the survivors' errors must name
#              the rank and host they could not reach ("could not reach rank 2 (host node3)").
#              mpirun itself cannot reach node3's daemon to confirm the kill and, with Open MPI's
#              default TCP keepalive (300 s + 9 x 20 s), would wait for minutes: the case reports
#              whether it ended and then stops it. Then (resume) `--resume auto` on node1 and node2
#              (2 ranks, micro-batch 3: the same global batch of 6) continues from the newest
#              checkpoint and must finish with adapters within 1e-5 of an uninterrupted 1-rank run.
#   link_cut_keepalive   the same cut with the mpirun options the README recommends for several
#              hosts (--mca oob_tcp_keepalive_time 3 --mca oob_tcp_keepalive_intvl 1
#              --mca oob_tcp_keepalive_probes 3 here, scaled down): mpirun itself must notice the
#              lost daemon and end the whole job, non-zero, within timeout_s + 15 s.
#   host_kill  every process of node3 (its Open MPI daemon and its rank) gets SIGKILL at step >= 25:
#              mpirun must end, non-zero, and every lora process on every host must be gone within
#              30 s; then the resume check as above.
#   mpirun_kill  mpirun gets SIGKILL at step >= 5: within 30 s no lora process may be left on any
#              host (the daemons on node2 and node3 lose mpirun and kill their ranks; node1's rank,
#              mpirun's own child, sees its parent gone and exits; its message is lost with
#              mpirun, which carried its output).
#
# Exit codes: 0 passed, 1 failed, 77 skipped (namespaces cannot be created here: not root, no `ip`).
# Set LORA_CLUSTER_KEEP=1 to keep the work directory.
#
# usage: run_fault_tests.sh LORA_BINARY SOURCE_DIR PYTHON CASE...
set -uo pipefail

lora=${1:?usage: run_fault_tests.sh LORA_BINARY SOURCE_DIR PYTHON CASE...}
src=${2:?}
python=${3:?}
shift 3
cases=("$@")
((${#cases[@]})) || { echo "no case given"; exit 2; }
for c in "${cases[@]}"; do
  [[ $c =~ ^(link_cut|link_cut_keepalive|host_kill|mpirun_kill)$ ]] ||
    { echo "unknown case '$c' (expected link_cut, link_cut_keepalive, host_kill, mpirun_kill)"; exit 2; }
done

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$src/tests/cluster/common.sh"
cluster_test_begin 3
cluster_mpirun_args
readonly kTimeoutS=5
write_config "$work/long.yaml" steps=100000 schedule=constant every=10 timeout_s=$kTimeoutS

# start_job NAME [mpirun options...]: 3 hosts x 1 rank in the background; sets job_pid (mpirun's
# pid: nsenter execs it) and job_log; each rank's output also goes to $work/out/NAME/1/rank.R.
start_job() {
  local name=$1
  shift
  write_hostfile 1 node1 node2 node3
  job_log=$work/logs/$name.log
  exec_on_host node1 mpirun "${MPIRUN_ARGS[@]}" "$@" --output-filename "$work/out/$name" -np 3 \
    "$lora" train "$work/long.yaml" --set "run.output_dir=$work/runs/$name" >"$job_log" 2>&1 &
  job_pid=$!
}

# watch_exit T0_MS LIMIT_S [MPIRUN_GRACE_S]: polls every 0.1 s until no lora process is left on any
# host and mpirun has ended (or, with MPIRUN_GRACE_S, that long after the last lora process ended),
# or LIMIT_S passed. Sets lora_gone_ms[HOST] (ms after T0 when HOST's last lora process
# was gone; unset if never), mpirun_gone_ms (empty if still running) and mpirun_rc.
watch_exit() {
  local t0=$1 limit_ms=$(($2 * 1000)) grace_ms=$((${3:-100000} * 1000)) host n_gone t all_gone_ms=""
  declare -gA lora_gone_ms=()
  mpirun_gone_ms=""
  mpirun_rc=""
  while :; do
    t=$(($(now_ms) - t0))
    n_gone=0
    for host in "${CLUSTER_HOSTS[@]}"; do
      if [[ -z ${lora_gone_ms[$host]:-} && -z $(host_lora_pids "$host") ]]; then lora_gone_ms[$host]=$t; fi
      [[ -n ${lora_gone_ms[$host]:-} ]] && n_gone=$((n_gone + 1))
    done
    if [[ -z $mpirun_gone_ms ]] && ! kill -0 "$job_pid" 2>/dev/null; then
      mpirun_gone_ms=$t
      wait "$job_pid"
      mpirun_rc=$?
    fi
    if ((n_gone == ${#CLUSTER_HOSTS[@]})); then
      [[ -n $mpirun_gone_ms ]] && return 0
      [[ -n $all_gone_ms ]] || all_gone_ms=$t
      ((t - all_gone_ms > grace_ms)) && return 0
    fi
    ((t > limit_ms)) && return 1
    sleep 0.1
  done
}

report_exit() {
  local host line="time to exit after $1:"
  for host in "${CLUSTER_HOSTS[@]}"; do
    line+=" $host's lora ${lora_gone_ms[$host]:-never}${lora_gone_ms[$host]:+ ms},"
  done
  if [[ -n $mpirun_gone_ms ]]; then line+=" mpirun $mpirun_gone_ms ms (exit $mpirun_rc)"; else line+=" mpirun still running"; fi
  echo "$line"
}

show_job() {
  echo "---- mpirun output"; cat "$job_log"
  local f
  for f in "$work/out/$1"/1/rank.*/std*; do
    [[ -s $f ]] || continue
    echo "---- $f"; tail -n 5 "$f"
  done
}

# rank_log NAME R: what rank R wrote (stdout and stderr), from its own host.
rank_log() { cat "$work/out/$1/1/rank.$2/stdout" "$work/out/$1/1/rank.$2/stderr" 2>/dev/null; }

# Stops what a fault left behind on the hosts (a daemon cut off from mpirun), as an operator would,
# and restores the links.
reset_hosts() {
  kill -KILL "$job_pid" 2>/dev/null
  wait "$job_pid" 2>/dev/null
  local host pid
  for host in "${CLUSTER_HOSTS[@]}"; do
    link_up "$host"
    for pid in $(host_pids "$host"); do kill -KILL "$pid" 2>/dev/null; done
  done
  sleep 0.5
}

# check_resume NAME: --resume auto on node1 and node2 (2 ranks of micro-batch 3) up to 10 steps past
# the newest checkpoint; adapters within 1e-5 of an uninterrupted 1-rank run of micro-batch 6.
check_resume() {
  local name=$1 ckpt_step target
  ckpt_step=$(find "$work/runs/$name/checkpoints" -name 'ckpt-*.h5' | sed 's/.*ckpt-\([0-9]*\)\.h5/\1/' | sort -n | tail -n 1)
  [[ -n $ckpt_step ]] || fail "$name: no checkpoint was written before the fault"
  target=$((ckpt_step + 10))
  write_hostfile 1 node1 node2
  local t0=$SECONDS
  on_host node1 timeout 120 mpirun "${MPIRUN_ARGS[@]}" -np 2 "$lora" train "$work/long.yaml" --resume auto \
    --set "run.output_dir=$work/runs/$name" --set train.micro_batch=3 --set "train.steps=$target" \
    >"$work/logs/$name-resume.log" 2>&1 ||
    { cat "$work/logs/$name-resume.log"; fail "$name: the resumed run on node1 and node2 failed"; }
  grep -q "resume: from .*ckpt-$ckpt_step.h5 at step $ckpt_step .*written by a world of 3); continuing with a world of 2" \
    "$work/logs/$name-resume.log" || { cat "$work/logs/$name-resume.log"; fail "$name: did not resume from step $ckpt_step at world size 2"; }
  on_host node1 env OMP_NUM_THREADS=1 timeout 120 "$lora" train "$work/long.yaml" --set "run.output_dir=$work/runs/$name-ref" \
    --set train.micro_batch=6 --set "train.steps=$target" >"$work/logs/$name-ref.log" 2>&1 ||
    { cat "$work/logs/$name-ref.log"; fail "$name: the uninterrupted reference run failed"; }
  compare_adapters "$work/runs/$name/checkpoints/ckpt-$target.h5" "$work/runs/$name-ref/checkpoints/ckpt-$target.h5" 1e-5 ||
    fail "$name: adapters after the fault and a resume on 2 hosts differ from an uninterrupted run"
  echo "resume: from step $ckpt_step on node1+node2 (world 3 -> 2) to step $target in $((SECONDS - t0)) s: adapters match an uninterrupted run"
}

case_link_cut() {
  local name=link-cut limit=$((kTimeoutS + 15))
  start_job "$name"
  wait_for_step "$work/runs/$name" 25 "$job_pid" || { show_job "$name"; fail "$name: the job never reached step 25"; }
  local t0 at
  at=$(last_step "$work/runs/$name")
  t0=$(now_ms)
  link_down node3
  echo "cut node3's link at step $at"
  watch_exit "$t0" 40 5
  report_exit "the cut"
  local host r bad=""
  for host in "${CLUSTER_HOSTS[@]}"; do
    [[ -n ${lora_gone_ms[$host]:-} ]] && ((lora_gone_ms[$host] <= limit * 1000)) ||
      bad+=" $host's lora ran ${lora_gone_ms[$host]:-over 40000} ms after the cut (limit ${limit} s);"
  done
  for r in 0 1 2; do
    rank_log "$name" $r | tail -n 3 | grep -q "lora: rank $r (node$((r + 1))): error:" ||
      bad+=" rank $r's own log does not end with its error;"
  done
  for r in 0 1; do
    rank_log "$name" $r | grep -q "could not reach rank 2 (host node3)" ||
      bad+=" rank $r's error does not name rank 2 on node3;"
  done
  rank_log "$name" 2 | grep -q "could not reach rank 0 (host node1), rank 1 (host node2)" ||
    bad+=" rank 2's error does not name ranks 0 and 1;"
  [[ -z $bad ]] || { show_job "$name"; fail "$name:$bad"; }
  echo "rank 0: $(rank_log "$name" 0 | grep -m1 'error:')"
  echo "rank 2: $(rank_log "$name" 2 | grep -m1 'error:')"
  [[ -z $mpirun_gone_ms ]] && echo "mpirun had not ended $(( $(now_ms) - t0 )) ms after the cut (it waits for node3's daemon): stopping it"
  reset_hosts
  link_down node3  # the remaining hosts resume without node3
  check_resume "$name"
  link_up node3
  echo "PASS link_cut at $(elapsed)"
}

case_link_cut_keepalive() {
  local name=link-cut-keepalive limit=$((kTimeoutS + 15))
  start_job "$name" --mca oob_tcp_keepalive_time 3 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3
  wait_for_step "$work/runs/$name" 25 "$job_pid" || { show_job "$name"; fail "$name: the job never reached step 25"; }
  local t0 at
  at=$(last_step "$work/runs/$name")
  t0=$(now_ms)
  link_down node3
  echo "cut node3's link at step $at"
  watch_exit "$t0" 40
  report_exit "the cut"
  if [[ -z $mpirun_gone_ms ]] || ((mpirun_gone_ms > limit * 1000 || mpirun_rc == 0)); then
    show_job "$name"; fail "$name: mpirun must end non-zero within $limit s of the cut"
  fi
  local host
  for host in "${CLUSTER_HOSTS[@]}"; do
    [[ -n ${lora_gone_ms[$host]:-} ]] && ((lora_gone_ms[$host] <= limit * 1000)) ||
      { show_job "$name"; fail "$name: lora still ran on $host $limit s after the cut"; }
  done
  grep -q "node3" "$job_log" || { show_job "$name"; fail "$name: mpirun's output does not name node3"; }
  reset_hosts
  echo "PASS link_cut_keepalive at $(elapsed)"
}

case_host_kill() {
  local name=host-kill
  start_job "$name"
  wait_for_step "$work/runs/$name" 25 "$job_pid" || { show_job "$name"; fail "$name: the job never reached step 25"; }
  local t0 at pids
  at=$(last_step "$work/runs/$name")
  pids=$(host_pids node3 | tr '\n' ' ')
  t0=$(now_ms)
  # shellcheck disable=SC2086
  kill -KILL $pids
  echo "killed every process of node3 ($pids) at step $at"
  watch_exit "$t0" 40
  report_exit "the kill"
  if [[ -z $mpirun_gone_ms ]] || ((mpirun_gone_ms > 30000 || mpirun_rc == 0)); then
    show_job "$name"; fail "$name: mpirun must end non-zero within 30 s"
  fi
  local host
  for host in "${CLUSTER_HOSTS[@]}"; do
    [[ -n ${lora_gone_ms[$host]:-} ]] && ((lora_gone_ms[$host] <= 30000)) ||
      { show_job "$name"; fail "$name: lora still ran on $host 30 s after the kill"; }
  done
  reset_hosts
  link_down node3
  check_resume "$name"
  link_up node3
  echo "PASS host_kill at $(elapsed)"
}

case_mpirun_kill() {
  local name=mpirun-kill
  start_job "$name"
  wait_for_step "$work/runs/$name" 5 "$job_pid" || { show_job "$name"; fail "$name: the job never reached step 5"; }
  local t0
  t0=$(now_ms)
  kill -KILL "$job_pid"
  echo "killed mpirun (pid $job_pid) at step $(last_step "$work/runs/$name")"
  watch_exit "$t0" 40
  report_exit "killing mpirun"
  local host
  for host in "${CLUSTER_HOSTS[@]}"; do
    [[ -n ${lora_gone_ms[$host]:-} ]] && ((lora_gone_ms[$host] <= 30000)) ||
      { show_job "$name"; fail "$name: an orphaned lora process still ran on $host 30 s after mpirun was killed"; }
  done
  reset_hosts
  echo "PASS mpirun_kill at $(elapsed)"
}

for c in "${cases[@]}"; do
  "case_$c"
done
echo "all cases passed in $(elapsed)"
