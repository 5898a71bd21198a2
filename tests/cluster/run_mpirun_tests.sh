#!/usr/bin/env bash
# mpirun across the hosts of the test cluster (tests/cluster/cluster.sh): mpirun runs on node1 and
# starts its daemons on node2 and node3 through rsh_agent.sh; ranks talk over TCP through the
# bridge (btl tcp,self). Cases (one or more, in order, on one 3-host cluster):
#
#   equal    3 hosts x 1 rank (micro-batch 2) and 1 rank (micro-batch 6), the same global batch:
#            the loss of every step and the final adapters (HDF5 checkpoints, h5py) agree within
#            1e-5; every host's link carried at least the run's gradient traffic, so the ranks did
#            talk across the links
#   ranks6   3 hosts x 2 ranks (micro-batch 1) against the same 1-rank run, within 1e-5
#   bytes    bytes crossing each host's link per step (received and sent, from the veth counters)
#            against a ring all-reduce of the adapter gradients: 2(N-1)/N x 4 x adapter params.
#            The per-step figure is the difference between a 40-step and a 10-step run divided by
#            30, so start-up (MPI_Init, the parameter broadcast, the checkpoint) cancels out; what is
#            left above the ring's payload (the loss and stop-flag all-reduces, Ethernet/IP/TCP
#            headers and ACKs) must stay under 5%. Also checks lora's own count (comm bytes/step).
#
# Exit codes: 0 passed, 1 failed, 77 skipped (namespaces cannot be created here: not root, no `ip`).
# Set LORA_CLUSTER_KEEP=1 to keep the work directory.
#
# usage: run_mpirun_tests.sh LORA_BINARY SOURCE_DIR PYTHON CASE...
set -uo pipefail

lora=${1:?usage: run_mpirun_tests.sh LORA_BINARY SOURCE_DIR PYTHON CASE...}
src=${2:?}
python=${3:?}
shift 3
cases=("$@")
((${#cases[@]})) || { echo "no case given"; exit 2; }
for c in "${cases[@]}"; do
  [[ $c =~ ^(equal|ranks6|bytes)$ ]] || { echo "unknown case '$c' (expected equal, ranks6, bytes)"; exit 2; }
done

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$src/tests/cluster/common.sh"
cluster_test_begin 3
cluster_mpirun_args

# train_mpirun NAME NP PER_HOST CONFIG [lora args...]: mpirun on node1 over node1..node3.
train_mpirun() {
  local name=$1 np=$2 per_host=$3 config=$4
  shift 4
  write_hostfile "$per_host" node1 node2 node3
  on_host node1 timeout 120 mpirun "${MPIRUN_ARGS[@]}" -np "$np" "$lora" train "$config" \
    --set "run.output_dir=$work/runs/$name" "$@" >"$work/logs/$name.log" 2>&1 ||
    { cat "$work/logs/$name.log"; fail "$name: mpirun -np $np across 3 hosts failed"; }
}

# train_single NAME CONFIG [lora args...]: one process on node1, no MPI.
train_single() {
  local name=$1 config=$2
  shift 2
  on_host node1 env OMP_NUM_THREADS=1 timeout 120 "$lora" train "$config" --set "run.output_dir=$work/runs/$name" "$@" \
    >"$work/logs/$name.log" 2>&1 || { cat "$work/logs/$name.log"; fail "$name: the 1-rank run failed"; }
}

all_link_bytes() {
  local h
  for h in node1 node2 node3; do echo "$h $(link_bytes "$h")"; done
}

# links_carried BEFORE AFTER MIN: every host's link received and sent at least MIN bytes.
links_carried() {
  local host rx0 tx0 rx1 tx1
  while read -r host rx0 tx0 && read -r _ rx1 tx1 <&3; do
    ((rx1 - rx0 >= $3 && tx1 - tx0 >= $3)) ||
      { echo "$host's link moved rx $((rx1 - rx0)) tx $((tx1 - tx0)) bytes, expected at least $3 each way"; return 1; }
  done < <(echo "$1") 3< <(echo "$2")
}

case_equal() {
  write_config "$work/small.yaml"
  train_single one "$work/small.yaml" --set train.micro_batch=6
  local before after
  before=$(all_link_bytes)
  train_mpirun hosts3x1 3 1 "$work/small.yaml"
  after=$(all_link_bytes)
  grep -q "lora: mpirun rank 0/3 (local 0/1) on node1" "$work/logs/hosts3x1.log" ||
    { cat "$work/logs/hosts3x1.log"; fail "equal: rank 0 did not report 3 ranks with rank 0 alone on node1"; }
  # 12 steps x 16 KiB of gradients: a ring moves 4/3 of that over each link; ask for half of it.
  links_carried "$before" "$after" $((12 * 16384 * 2 / 3)) || fail "equal: the ranks did not talk across every link"
  compare_losses "$work/runs/hosts3x1" "$work/runs/one" 1e-5 || fail "equal: losses of 3 hosts x 1 rank differ from 1 rank"
  compare_adapters "$work/runs/hosts3x1/checkpoints/ckpt-12.h5" "$work/runs/one/checkpoints/ckpt-12.h5" 1e-5 ||
    fail "equal: adapters of 3 hosts x 1 rank differ from 1 rank"
  echo "PASS equal (3 hosts x 1 rank = 1 rank, global batch 6) at $(elapsed)"
}

case_ranks6() {
  write_config "$work/small.yaml"
  [[ -d $work/runs/one ]] || train_single one "$work/small.yaml" --set train.micro_batch=6
  train_mpirun hosts3x2 6 2 "$work/small.yaml" --set train.micro_batch=1
  grep -q "lora: mpirun rank 0/6 (local 0/2) on node1" "$work/logs/hosts3x2.log" ||
    { cat "$work/logs/hosts3x2.log"; fail "ranks6: rank 0 did not report 6 ranks, 2 on node1"; }
  compare_losses "$work/runs/hosts3x2" "$work/runs/one" 1e-5 || fail "ranks6: losses of 3 hosts x 2 ranks differ from 1 rank"
  compare_adapters "$work/runs/hosts3x2/checkpoints/ckpt-12.h5" "$work/runs/one/checkpoints/ckpt-12.h5" 1e-5 ||
    fail "ranks6: adapters of 3 hosts x 2 ranks differ from 1 rank"
  echo "PASS ranks6 (3 hosts x 2 ranks = 1 rank, global batch 6) at $(elapsed)"
}

case_bytes() {
  # d_model 128, LoRA rank 8 on all four targets: 32768 adapter parameters, 128 KiB of gradients.
  write_config "$work/wide.yaml" d_model=128 rank=8
  local b0 b1 b2
  b0=$(all_link_bytes)
  train_mpirun bytes10 3 1 "$work/wide.yaml" --set train.steps=10
  b1=$(all_link_bytes)
  train_mpirun bytes40 3 1 "$work/wide.yaml" --set train.steps=40
  b2=$(all_link_bytes)
  local params
  params=$(sed -n 's/.*lora: params trainable \([0-9.]*K\) of.*/\1/p' "$work/logs/bytes40.log")
  local grad_bytes
  grad_bytes=$(sed -n 's/.*all-reduce per step .* (\([0-9]*\) bytes).*/\1/p' "$work/logs/bytes40.log" | head -n 1)
  [[ $grad_bytes == 131072 ]] || fail "bytes: lora reports $grad_bytes bytes of gradients per step, expected 131072 (32768 params)"
  grep -q '"comm_bytes_per_step": 131072' "$work/runs/bytes40/metrics.jsonl" ||
    fail "bytes: metrics.jsonl does not report 131072 all-reduce bytes per step"
  "$python" - "$b0" "$b1" "$b2" "$grad_bytes" <<'EOF' || fail "bytes: per-link traffic does not match a ring all-reduce"
import sys
def parse(text):
    return {h: (int(rx), int(tx)) for h, rx, tx in (line.split() for line in text.strip().splitlines())}
b0, b1, b2 = (parse(t) for t in sys.argv[1:4])
grad = int(sys.argv[4])
n = 3
ring = 2 * (n - 1) / n * grad
print(f"ring all-reduce of {grad} bytes over {n} hosts: {ring:.0f} bytes each way per link per step")
ok = True
for h in sorted(b0):
    for i, way in enumerate(("rx", "tx")):
        per_step = ((b2[h][i] - b1[h][i]) - (b1[h][i] - b0[h][i])) / 30
        ratio = per_step / ring
        good = 1.0 <= ratio <= 1.05
        ok &= good
        print(f"{h} {way}: {per_step:.0f} bytes/step = ring x {ratio:.4f} (overhead {100 * (ratio - 1):+.2f}%){'' if good else '  <-- outside [1, 1.05]'}")
sys.exit(0 if ok else 1)
EOF
  echo "PASS bytes (per-link traffic per step matches a ring all-reduce of $params adapter params) at $(elapsed)"
}

for c in "${cases[@]}"; do
  "case_$c"
done
echo "all cases passed in $(elapsed)"
