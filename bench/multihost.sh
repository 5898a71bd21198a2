#!/usr/bin/env bash
# Data-parallel training across 3 hosts over rate-limited links, measured with the real binary on
# the namespace cluster of tests/cluster/cluster.sh (each host its own network and UTS namespace,
# veth links to a bridge, Open MPI over TCP only: btl tcp,self):
#   1. shaped links: every link limited by tbf to each rate in RATES (both directions), 3 hosts x
#      1 rank, LoRA and full fine-tuning, comm.overlap true and false: step time and exposed
#      communication per step (the time the loop waits on all-reduces);
#   2. weak scaling 1 -> 2 -> 3 hosts, LoRA, overlap on, at the first rate: tokens/s and efficiency;
#   3. the links themselves: one 200 MB TCP transfer node1 -> node2 at each rate.
# Shape: GPT-2 124M (12 layers, d_model 768, 12 heads, vocab 50257, random init), seq 128,
# micro-batch 1 per rank, LoRA r 8 on attn.qkv+attn.proj, 1 thread per rank; byte-level text data.
# Runs alternate (every configuration once per repeat, in the same order) so that drift in the
# machine's load reaches all of them; the summary gives medians over repeats.
#
# Usage (root; about 25 minutes on a 2-core machine with REPEATS=2):
#   bash bench/multihost.sh [BUILD_DIR] > summary.md
# Environment: REPEATS (2), RATES ("1gbit 10gbit"), MODES ("lora full"), STEPS_LORA (8),
# STEPS_FULL (5), WARMUP (2:
# steps excluded from every run's median), KEEP=1 keeps the work directory.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
lora=$build/lora
[[ -x $lora ]] || { echo "multihost.sh: $lora not found (build first: bash scripts/build.sh)" >&2; exit 2; }
repeats=${REPEATS:-2}
read -r -a rates <<<"${RATES:-1gbit 10gbit}"
read -r -a modes <<<"${MODES:-lora full}"
steps_lora=${STEPS_LORA:-8}
steps_full=${STEPS_FULL:-5}
warmup=${WARMUP:-2}

src=$root
# shellcheck source=../tests/cluster/cluster.sh
source "$root/tests/cluster/cluster.sh"
if ! why=$(cluster_precheck); then echo "multihost.sh: $why" >&2; exit 2; fi
work=$(mktemp -d /tmp/lora-multihost-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  cluster_stop
  if [[ ${KEEP:-0} == 1 ]]; then echo "multihost.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
cluster_start 3 || { echo "multihost.sh: could not create the cluster" >&2; exit 1; }

# Data: byte-level text (the token ids are bytes, a subset of the 50257-token vocabulary).
fortunes=/usr/share/games/fortunes
if [[ -d $fortunes ]]; then
  data_source="Debian fortunes corpus ($fortunes, text files concatenated)"
  find "$fortunes" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -print0 | sort -z |
    xargs -0 cat >"$work/train.txt"
else
  data_source="generated corpus (seeded random words)"
  python3 - "$work/train.txt" <<'EOF'
import random, sys
rng = random.Random(1)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
with open(sys.argv[1], "w") as f:
    for _ in range(20000):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + ".\n")
EOF
fi
cat >"$work/config.yaml" <<EOF
run: {name: multihost-bench, output_dir: $work/runs/unset, seed: 1}
model: {arch: gpt2, vocab_size: 50257, n_layer: 12, n_head: 12, d_model: 768, max_seq_len: 1024}
lora: {rank: 8, alpha: 16, targets: [attn.qkv, attn.proj]}
data: {train: $work/train.txt, format: text, seq_len: 128}
train: {mode: lora, micro_batch: 1, grad_accum: 1, steps: 8, lr: 1.0e-4, warmup_steps: 0,
        schedule: constant, eval_every: 0, log_every: 1}
checkpoint: {every: 0, keep: 1}
device: {backend: cpu, threads: 1}
comm: {bucket_mb: 4, overlap: true, timeout_s: 600}
EOF

mpirun_args=(--allow-run-as-root --oversubscribe --bind-to none
  --mca plm_rsh_agent "$root/tests/cluster/rsh_agent.sh"
  --mca oob_tcp_if_include "$LORA_CLUSTER_NET.0/24" --mca btl_tcp_if_include "$LORA_CLUSTER_NET.0/24"
  --mca btl tcp,self --mca pml ob1 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)
# The daemons start from a clean environment (like ssh): pass OpenBLAS's kernel choice on, so the
# ranks of every host run the same kernels.
[[ -n ${OPENBLAS_CORETYPE:-} ]] && mpirun_args+=(-x OPENBLAS_CORETYPE)
manifest=$work/manifest.jsonl
: >"$manifest"

# run GROUP LABEL RATE HOSTS MODE OVERLAP: one training run; appends to the manifest.
run() {
  local group=$1 label=$2 rate=$3 hosts=$4 mode=$5 overlap=$6
  local steps=$steps_lora
  [[ $mode == full ]] && steps=$steps_full
  local dir=$work/runs/$label i
  : >"$work/hosts"
  for ((i = 1; i <= hosts; ++i)); do echo "node$i slots=1" >>"$work/hosts"; done
  local cmd=(mpirun "${mpirun_args[@]}" --hostfile "$work/hosts" -np "$hosts" "$lora" train "$work/config.yaml"
    --set "run.output_dir=$dir" --set "train.mode=$mode" --set "comm.overlap=$overlap" --set "train.steps=$steps")
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  # In the background and waited for, so that SIGINT/SIGTERM reach the trap at once.
  on_host node1 timeout 900 "${cmd[@]}" >"$work/$label.log" 2>&1 &
  wait $! || rc=$?
  t1=$(date +%s.%N)
  if ((rc != 0)); then
    echo "multihost.sh: run $label failed (exit $rc):" >&2
    tail -20 "$work/$label.log" >&2
    exit 1
  fi
  python3 - "$manifest" "$group" "$label" "$rate" "$hosts" "$mode" "$overlap" "$dir" "$t0" "$t1" "${cmd[*]}" <<'EOF'
import json, sys
manifest, group, label, rate, hosts, mode, overlap, d, t0, t1, cmd = sys.argv[1:]
with open(manifest, "a") as f:
    f.write(json.dumps({"group": group, "label": label, "rate": rate, "hosts": int(hosts), "mode": mode,
                        "overlap": overlap == "true", "dir": d, "seconds": float(t1) - float(t0),
                        "command": "on node1: " + cmd}) + "\n")
EOF
  # Keep what the summary reads; full-mode weights and checkpoints are 0.5-1.5 GB each.
  mkdir -p "$work/kept/$label" && cp "$dir/metrics.jsonl" "$work/kept/$label/" && rm -rf "$dir"
  python3 - "$manifest" "$work/kept/$label" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
rec = json.loads(lines[-1]); rec["dir"] = sys.argv[2]
open(sys.argv[1], "w").write("\n".join(lines[:-1] + [json.dumps(rec)]) + "\n")
EOF
  echo "multihost.sh: $label done in $(python3 -c "print(f'{$t1 - $t0:.0f}')") s" >&2
}

# probe RATE: one 200 MB TCP transfer node1 -> node2; appends the achieved rate to the manifest.
probe() {
  local rate=$1 port=5201
  on_host node2 timeout 60 python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
print(n)' "$port" >"$work/probe-$rate.rx" &
  local rx=$!
  sleep 0.5
  on_host node1 timeout 60 python3 - "$(host_addr node2)" "$port" "$rate" "$manifest" <<'EOF'
import json, socket, sys, time
host, port, rate, manifest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
total, chunk = 200 * 10**6, b"\0" * (1 << 20)
s = socket.create_connection((host, port))
t0 = time.perf_counter(); sent = 0
while sent < total:
    sent += s.send(chunk[: min(len(chunk), total - sent)])
s.shutdown(socket.SHUT_WR); s.recv(1); dt = time.perf_counter() - t0
with open(manifest, "a") as f:
    f.write(json.dumps({"probe": rate, "bytes": sent, "seconds": dt}) + "\n")
EOF
  wait "$rx"
}

echo "multihost.sh: cluster ${CLUSTER_HOSTS[*]}, $repeats repeats, rates ${rates[*]}" >&2
start=$(date +%s)
for rate in "${rates[@]}"; do
  link_shape "$rate" || { echo "multihost.sh: tc tbf failed" >&2; exit 1; }
  probe "$rate"
done
for rep in $(seq 1 "$repeats"); do
  for rate in "${rates[@]}"; do
    link_shape "$rate"
    for mode in "${modes[@]}"; do
      for overlap in true false; do
        run shaped "$rate-h3-$mode-overlap_$overlap-$rep" "$rate" 3 "$mode" "$overlap"
      done
    done
    if [[ $rate == "${rates[0]}" ]]; then
      for hosts in 1 2; do
        run weak "$rate-h$hosts-lora-overlap_true-$rep" "$rate" "$hosts" lora true
      done
    fi
  done
done
end=$(date +%s)

python3 "$root/bench/summarize_multihost.py" "$manifest" "$warmup" "$data_source" "$((end - start))"
