# Shared set-up of the multi-host tests (sourced by run_mpirun_tests.sh, run_fault_tests.sh and
# run_slurm_tests.sh; not run). The sourcing script sets lora, src and python first.
#
#   cluster_test_begin N      skips (exit 77, reason printed) when namespaces cannot be created,
#                             makes the work directory $work, starts an N-host cluster and installs
#                             the EXIT trap that stops it (and everything in it) whatever happens
#   write_corpus              $work/train.txt and $work/val.txt (a few hundred short sentences)
#   write_config PATH KEY=VALUE...   a tiny GPT-2 LoRA config; KEY=VALUE pairs replace defaults
#   write_hostfile SLOTS HOST...     $work/hosts: "HOST slots=SLOTS" per host
#   cluster_mpirun_args       fills the array MPIRUN_ARGS: mpirun options that start daemons
#                             through rsh_agent.sh and keep MPI traffic on the cluster's /24 over
#                             TCP (no shared memory between ranks: btl tcp,self, pml ob1)
#   last_step RUN_DIR         the newest step in the run's metrics.jsonl (0 when none yet)
#   wait_for_step RUN_DIR STEP PID   polls until the run logged STEP (0) or PID ended / 120 s (1)
#   compare_adapters A.h5 B.h5 TOL   the adapters and the step of two checkpoints match
#   compare_losses RUN_A RUN_B TOL   the per-step losses of two runs' metrics.jsonl match
#   now_ms                    milliseconds since the epoch
# shellcheck shell=bash

readonly kSkip=77

skip() { echo "SKIPPED: $*"; exit "$kSkip"; }
fail() { echo "FAILED: $*"; exit 1; }

now_ms() { date +%s%3N; }

# shellcheck source-path=SCRIPTDIR source=cluster.sh
source "$src/tests/cluster/cluster.sh"

cluster_test_begin() {
  local n=$1 why
  why=$(cluster_precheck) || skip "$why"
  [[ -x $lora ]] || fail "no lora binary at $lora"
  lora=$(readlink -f "$lora")
  "$python" -c 'import h5py' 2>/dev/null || skip "$python has no h5py (scripts/setup.sh installs python3-h5py)"
  work=$(mktemp -d "${TMPDIR:-/tmp}/lora-cluster-test.XXXXXX")
  chmod 755 "$work"
  _cluster_test_cleanup() {
    local rc=$?
    [[ $(type -t cluster_test_extra_cleanup) == function ]] && cluster_test_extra_cleanup
    cluster_stop
    if [[ -n ${LORA_CLUSTER_KEEP:-} ]]; then echo "kept $work"; else rm -rf "$work"; fi
    exit "$rc"
  }
  trap _cluster_test_cleanup EXIT
  trap 'exit 1' INT TERM
  t_start=$SECONDS
  cluster_start "$n" || fail "could not create the $n-host cluster"
  echo "cluster $CLUSTER_PREFIX: ${CLUSTER_HOSTS[*]} on $LORA_CLUSTER_NET.0/24 (bridge in $CLUSTER_PREFIX-sw)"
  mkdir -p "$work/runs" "$work/logs"
  write_corpus
}

elapsed() { echo "$((SECONDS - t_start)) s"; }

write_corpus() {
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
}

# The defaults: 2 layers, d_model 32, LoRA rank 4 on all four targets (4096 adapter parameters),
# 12 steps of micro-batch 2. Override with d_model=128 steps=40 ...
write_config() {
  local path=$1
  shift
  local -A v=([d_model]=32 [rank]=4 [steps]=12 [micro_batch]=2 [lr]=0.003 [schedule]=cosine
    [every]=0 [timeout_s]=60 [mode]=lora)
  local kv
  for kv in "$@"; do v[${kv%%=*}]=${kv#*=}; done
  cat >"$path" <<EOF
run: {name: cluster-test, output_dir: $work/runs/unset, seed: 7}
model: {arch: gpt2, vocab_size: 256, n_layer: 2, n_head: 2, d_model: ${v[d_model]}, max_seq_len: 32}
lora: {rank: ${v[rank]}, alpha: 8, targets: [attn.qkv, attn.proj, mlp.fc, mlp.proj]}
data: {train: $work/train.txt, val: $work/val.txt, format: text, seq_len: 32}
train: {mode: ${v[mode]}, micro_batch: ${v[micro_batch]}, grad_accum: 1, steps: ${v[steps]}, lr: ${v[lr]}, schedule: ${v[schedule]}, warmup_steps: 1, eval_batches: 2, log_every: 1}
checkpoint: {every: ${v[every]}, keep: 3}
device: {threads: 1}
comm: {timeout_s: ${v[timeout_s]}}
EOF
}

write_hostfile() {
  local slots=$1 host
  shift
  : >"$work/hosts"
  for host in "$@"; do echo "$host slots=$slots" >>"$work/hosts"; done
}

cluster_mpirun_args() {
  MPIRUN_ARGS=(--allow-run-as-root --oversubscribe --bind-to none --hostfile "$work/hosts"
    --mca plm_rsh_agent "$src/tests/cluster/rsh_agent.sh"
    --mca oob_tcp_if_include "$LORA_CLUSTER_NET.0/24" --mca btl_tcp_if_include "$LORA_CLUSTER_NET.0/24"
    --mca btl tcp,self --mca pml ob1
    -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)
  # The daemons start from a clean environment (like ssh): pass OpenBLAS's kernel choice on, so
  # the ranks of every host compute with the same kernels.
  [[ -n ${OPENBLAS_CORETYPE:-} ]] && MPIRUN_ARGS+=(-x OPENBLAS_CORETYPE)
  return 0
}

last_step() {
  local line
  line=$(tail -n 1 "$1/metrics.jsonl" 2>/dev/null)
  [[ $line =~ \"step\":\ *([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

wait_for_step() {
  local s
  for _ in $(seq 1 2400); do
    s=$(last_step "$1")
    ((s >= $2)) && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

compare_adapters() {
  "$python" "$src/tests/slurm/compare_adapters.py" "$1" "$2" "$3"
}

compare_losses() {
  "$python" - "$1/metrics.jsonl" "$2/metrics.jsonl" "$3" <<'EOF'
import json, sys
def losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) }
a, b, tol = losses(sys.argv[1]), losses(sys.argv[2]), float(sys.argv[3])
if not a or sorted(a) != sorted(b):
    sys.exit(f"compare_losses: steps {sorted(a)} vs {sorted(b)}")
worst = max(abs(a[s] - b[s]) for s in a)
print(f"compare_losses: {len(a)} steps, max |diff| {worst:.3g}")
sys.exit(0 if worst <= tol else 1)
EOF
}
