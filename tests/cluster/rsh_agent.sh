#!/bin/sh
# Open MPI's remote-start agent for the test cluster (tests/cluster/cluster.sh), used in place of
# ssh: `mpirun --mca plm_rsh_agent tests/cluster/rsh_agent.sh`. mpirun runs it as
# `rsh_agent.sh [options] HOST COMMAND...` to start its daemon (orted) on HOST; like ssh, it runs
# COMMAND with /bin/sh on that host, here by entering the host's network and UTS namespaces.
# Like an ssh session it starts from a clean environment (PATH and HOME only).
# Reads LORA_CLUSTER_PREFIX and LORA_CLUSTER_RUN, exported by cluster_start.
set -u
while [ $# -gt 0 ]; do
  case $1 in
    -*) shift ;;  # ssh options Open MPI may add (-x): meaningless here
    *) break ;;
  esac
done
host=${1:?usage: rsh_agent.sh [options] HOST COMMAND...}
shift
case $host in
  node[0-9]*) ;;
  *) echo "rsh_agent.sh: unknown host '$host' (expected node1, node2, ...)" >&2; exit 255 ;;
esac
ns=/run/netns/${LORA_CLUSTER_PREFIX:?rsh_agent.sh: LORA_CLUSTER_PREFIX is not set}-$host
uts=${LORA_CLUSTER_RUN:?rsh_agent.sh: LORA_CLUSTER_RUN is not set}/$host.uts
[ -e "$ns" ] && [ -e "$uts" ] || { echo "rsh_agent.sh: no host $host in cluster $LORA_CLUSTER_PREFIX" >&2; exit 255; }
exec nsenter --net="$ns" --uts="$uts" -- env -i PATH="$PATH" HOME="${HOME:-/root}" \
  LORA_CLUSTER_PREFIX="$LORA_CLUSTER_PREFIX" LORA_CLUSTER_RUN="$LORA_CLUSTER_RUN" /bin/sh -c "$*"
