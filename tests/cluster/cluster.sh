# A cluster of test hosts on this one machine (sourced, not run): each host is its own network
# namespace and its own UTS namespace (so `hostname` says node1, node2, ...), and every host's
# eth0 is one end of a veth pair whose other end is a port of a bridge in a separate "switch"
# namespace. Addresses come from one private /24 (LORA_CLUSTER_NET, default 10.231.0) that exists
# only inside these namespaces: there is no default route and nothing in the machine's own
# namespace, so a process on a host can reach the other hosts and nothing else. The filesystem,
# process table and /dev/shm stay shared, as with a shared filesystem; what separates the hosts is
# the network, so ranks on different hosts must talk over TCP through the bridge (Open MPI:
# `--mca btl tcp,self`), and the veth byte counters show what crossed each link.
#
#   cluster_precheck           prints why a cluster cannot be created here and returns 1, or 0
#   cluster_start N            creates node1..nodeN and the switch; sets CLUSTER_PREFIX,
#                              CLUSTER_HOSTS (array) and exports LORA_CLUSTER_PREFIX (read by
#                              rsh_agent.sh); returns 1 (with the reason) on failure
#   cluster_stop               kills every process inside the namespaces (TERM, then KILL after
#                              5 s), removes the namespaces and the UTS bind mounts; safe to call
#                              twice and after a partial start
#   on_host HOST CMD...        runs CMD inside HOST's network and UTS namespaces
#   exec_on_host HOST CMD...   the same, replacing the calling (sub)shell: `exec_on_host node1
#                              mpirun ... &` makes $! the pid of mpirun itself
#   host_addr HOST             the host's address (node2 -> 10.231.0.2)
#   host_pids HOST             pids of the processes in HOST's network namespace, one a line
#   host_lora_pids HOST        the subset whose command is lora
#   link_bytes HOST            "RX TX" bytes of HOST's eth0 (as seen from the host)
#   link_down HOST / link_up HOST   sets the host's eth0 down (a cut cable) or up again
#   link_shape RATE            tbf rate limit (e.g. 1gbit) on both directions of every link
#
# Every name starts with CLUSTER_PREFIX (lc<pid of the shell>), so several clusters (tests and a
# benchmark at once) never collide; the switch namespace holds the bridge and one port per host.
# cluster_start first removes what clusters of dead shells left behind (a test runner's SIGKILL
# gives no shell a chance to clean up): namespaces lc<PID>-* whose PID no longer exists.
# shellcheck shell=bash

LORA_CLUSTER_NET=${LORA_CLUSTER_NET:-10.231.0}

cluster_precheck() {
  local tool
  for tool in ip unshare nsenter mount umount; do
    command -v "$tool" >/dev/null || { echo "'$tool' not found (iproute2 and util-linux are needed)"; return 1; }
  done
  [[ $(id -u) -eq 0 ]] || { echo "creating network namespaces needs root, and this runs as uid $(id -u)"; return 1; }
  local probe=lcprobe$$
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "'ip netns add' is not permitted here (no CAP_SYS_ADMIN/CAP_NET_ADMIN, e.g. an unprivileged container)"
    return 1
  fi
  if ! ip -n "$probe" link add lcp0 type veth peer name lcp1 2>/dev/null; then
    ip netns del "$probe" 2>/dev/null
    echo "veth pairs cannot be created here (no veth support in this kernel?)"
    return 1
  fi
  ip netns del "$probe"
  if ! unshare --uts true 2>/dev/null; then
    echo "UTS namespaces cannot be created here ('unshare --uts' failed)"
    return 1
  fi
  return 0
}

_cluster_ns() { echo "$CLUSTER_PREFIX-$1"; }

on_host() {
  local host=$1
  shift
  nsenter --net="/run/netns/$CLUSTER_PREFIX-$host" --uts="$CLUSTER_RUN/$host.uts" -- "$@"
}

exec_on_host() {
  local host=$1
  shift
  exec nsenter --net="/run/netns/$CLUSTER_PREFIX-$host" --uts="$CLUSTER_RUN/$host.uts" -- "$@"
}

host_addr() { echo "$LORA_CLUSTER_NET.${1#node}"; }

host_pids() { ip netns pids "$CLUSTER_PREFIX-$1" 2>/dev/null; }

host_lora_pids() {
  local pid
  for pid in $(host_pids "$1"); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == lora ]] && echo "$pid"
  done
}

# /sys/class/net shows the namespace that mounted sysfs, not ours: read ip's JSON instead.
link_bytes() {
  ip -n "$CLUSTER_PREFIX-$1" -s -j link show eth0 |
    python3 -c 'import json, sys; s = json.load(sys.stdin)[0]["stats64"]; print(s["rx"]["bytes"], s["tx"]["bytes"])'
}

link_down() { ip -n "$CLUSTER_PREFIX-$1" link set eth0 down; }
link_up() { ip -n "$CLUSTER_PREFIX-$1" link set eth0 up; }

# link_shape RATE: the same token bucket on each host's eth0 (host -> switch) and on the switch's
# port towards the host (switch -> host), so each direction of each link carries at most RATE.
# The bucket holds 1 ms at RATE (at least 64 KiB: veth hands over GSO segments of up to 64 KiB).
link_shape() {
  local rate=$1 host bits burst
  bits=$(python3 -c "
import re, sys
m = re.fullmatch(r'(\d+)(k|m|g)?bit', sys.argv[1])
if not m: sys.exit(1)
print(int(m.group(1)) * {None: 1, 'k': 10**3, 'm': 10**6, 'g': 10**9}[m.group(2)])" "$rate") ||
    { echo "link_shape: rate '$rate' is not like 1gbit, 500mbit" >&2; return 2; }
  burst=$((bits / 8 / 1000))
  ((burst < 65536)) && burst=65536
  for host in "${CLUSTER_HOSTS[@]}"; do
    ip netns exec "$CLUSTER_PREFIX-$host" tc qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 50ms || return 1
    ip netns exec "$CLUSTER_PREFIX-sw" tc qdisc replace dev "$host" root tbf rate "$rate" burst "$burst" latency 50ms || return 1
  done
}

# Exit 0 when a TCP connection to port 9 of the address is refused or accepted (the host answered),
# 1 when it times out (no ping here: iputils is not installed everywhere).
_cluster_probe='
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    sys.exit(0)
except OSError:
    sys.exit(1)
sys.exit(0)'

# Removes the clusters of earlier test shells that died without cleaning up (killed by a test
# runner's timeout with SIGKILL): namespaces named lc<PID>-* whose shell PID no longer exists.
cluster_reap_stale() {
  local ns owner pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^lc[0-9]+-(sw|node[0-9]+)$'); do
    owner=${ns%%-*}
    owner=${owner#lc}
    kill -0 "$owner" 2>/dev/null && continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  local dir f
  for dir in /run/lora-cluster/lc*; do
    [[ -d $dir ]] || continue
    owner=${dir##*/lc}
    kill -0 "$owner" 2>/dev/null && continue
    for f in "$dir"/*; do umount "$f" 2>/dev/null; rm -f "$f"; done
    umount "$dir" 2>/dev/null
    rmdir "$dir" 2>/dev/null
  done
}

cluster_start() {
  local n=$1 i host ns
  cluster_reap_stale
  CLUSTER_PREFIX=lc$$
  CLUSTER_RUN=/run/lora-cluster/$CLUSTER_PREFIX
  CLUSTER_HOSTS=()
  export LORA_CLUSTER_PREFIX=$CLUSTER_PREFIX LORA_CLUSTER_RUN=$CLUSTER_RUN
  mkdir -p "$CLUSTER_RUN" || return 1
  # unshare --uts=FILE keeps the namespace alive by bind-mounting it on FILE; such a mount must not
  # propagate, so the directory becomes a private mount of its own.
  mount --bind "$CLUSTER_RUN" "$CLUSTER_RUN" && mount --make-private "$CLUSTER_RUN" || {
    echo "cannot make $CLUSTER_RUN a private mount"; return 1; }
  _cluster_sysctl_quiet() {
    # No IPv6 (its neighbour discovery would add bytes to the counters), no forwarding.
    ip netns exec "$1" sh -c 'sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv4.ip_forward=0' 2>/dev/null
  }
  ns=$(_cluster_ns sw)
  ip netns add "$ns" || { echo "cannot create network namespace $ns"; return 1; }
  _cluster_sysctl_quiet "$ns"
  ip -n "$ns" link add br0 type bridge && ip -n "$ns" link set br0 up || return 1
  for ((i = 1; i <= n; ++i)); do
    host=node$i
    ns=$(_cluster_ns "$host")
    ip netns add "$ns" || { echo "cannot create network namespace $ns"; return 1; }
    _cluster_sysctl_quiet "$ns"
    ip -n "$(_cluster_ns sw)" link add "$host" type veth peer name eth0 netns "$ns" || return 1
    ip -n "$(_cluster_ns sw)" link set "$host" master br0 || return 1
    ip -n "$(_cluster_ns sw)" link set "$host" up || return 1
    ip -n "$ns" link set lo up || return 1
    ip -n "$ns" addr add "$(host_addr "$host")/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    touch "$CLUSTER_RUN/$host.uts"
    unshare --uts="$CLUSTER_RUN/$host.uts" hostname "$host" || { echo "cannot create the UTS namespace of $host"; return 1; }
    CLUSTER_HOSTS+=("$host")
  done
  # Every host must reach every other one (ARP through the bridge) before anything starts.
  local a b ok
  for a in "${CLUSTER_HOSTS[@]}"; do
    for b in "${CLUSTER_HOSTS[@]}"; do
      [[ $a == "$b" ]] && continue
      ok=""
      for _ in 1 2 3 4 5; do
        on_host "$a" python3 -c "$_cluster_probe" "$(host_addr "$b")" && { ok=1; break; }
      done
      [[ -n $ok ]] || { echo "$a cannot reach $b ($(host_addr "$b"))"; return 1; }
    done
  done
  [[ $(on_host node1 hostname) == node1 ]] || { echo "node1's UTS namespace does not say node1"; return 1; }
  return 0
}

cluster_stop() {
  [[ -n ${CLUSTER_PREFIX:-} ]] || return 0
  local ns pid
  local -a all=()
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$CLUSTER_PREFIX-"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do all+=("$pid"); done
  done
  if ((${#all[@]})); then
    kill -TERM "${all[@]}" 2>/dev/null
    for _ in $(seq 1 50); do
      local alive=0
      for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    kill -KILL "${all[@]}" 2>/dev/null
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$CLUSTER_PREFIX-"); do
    ip netns del "$ns" 2>/dev/null
  done
  if [[ -d ${CLUSTER_RUN:-} ]]; then
    local f
    for f in "$CLUSTER_RUN"/*.uts; do
      [[ -e $f ]] || continue
      umount "$f" 2>/dev/null
      rm -f "$f"
    done
    umount "$CLUSTER_RUN" 2>/dev/null
    rmdir "$CLUSTER_RUN" 2>/dev/null
    rmdir /run/lora-cluster 2>/dev/null
  fi
  CLUSTER_PREFIX=
}
