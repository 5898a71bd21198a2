#!/usr/bin/env bash
# Data-parallel scaling of `lora train` on one CPU machine, measured with the real binary:
#   1. weak scaling: 1 rank vs `mpirun -np 2`, 1 thread per rank, same per-rank micro-batch,
#      alternating 1,2,1,2,... REPEATS times, with --bind-to none and with --bind-to core;
#   2. exposed communication at 2 ranks with comm.overlap true/false, at the default bucket size
#      (one bucket) and at comm.bucket_mb 0.05 and 0.02 (several buckets; bench/bucket_count
#      says how many, from the real model and gradient reducer);
#   3. all-reduce bytes per step at 2 ranks, LoRA vs full fine-tuning.
# Model: GPT-2 style, 4 layers, d_model 256, 4 heads, seq 128, micro_batch 8, LoRA r 8 on
# attn.qkv+attn.proj, byte-level text (the Debian fortunes corpus, or a generated one).
# Prints a markdown summary (bench/summarize.py) with the date, CPU, commands and numbers.
#
# Usage: bench/scaling.sh [BUILD_DIR]       (default: build/; needs lora and bench/bucket_count)
# Environment: STEPS (30), LOG_EVERY (5), REPEATS (3: weak-scaling pairs and overlap runs),
# KEEP=1 keeps the temp dir. About 3 to 4 minutes on an idle 2-core machine.
# With two ranks on one machine the all-reduce goes through shared memory, not a network.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
lora="$build/lora"
bucket_count="$build/bench/bucket_count"
for exe in "$lora" "$bucket_count"; do
  [[ -x $exe ]] || { echo "scaling.sh: $exe not found (build first: bash scripts/build.sh)" >&2; exit 2; }
done
command -v mpirun >/dev/null || { echo "scaling.sh: mpirun not found" >&2; exit 2; }

steps=${STEPS:-30}
log_every=${LOG_EVERY:-5}
repeats=${REPEATS:-3}
work=$(mktemp -d /tmp/lora-scaling.XXXXXX)
if [[ ${KEEP:-0} != 1 ]]; then trap 'rm -rf "$work"' EXIT; fi

# Data: byte-level text, about 1 MB.
fortunes=/usr/share/games/fortunes
if [[ -d $fortunes ]]; then
  data_source="Debian fortunes corpus ($fortunes, text files concatenated)"
  find "$fortunes" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -print0 | sort -z |
    xargs -0 cat > "$work/train.txt"
else
  data_source="generated corpus (seeded random words)"
  python3 - "$work/train.txt" <<'EOF'
import random, sys
rng = random.Random(1)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
         for _ in range(2000)]
with open(sys.argv[1], "w") as f:
    for _ in range(20000):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + ".\n")
EOF
fi

cat > "$work/config.yaml" <<EOF
run: {name: scaling, output_dir: $work/runs/default, seed: 1}
model: {arch: gpt2, vocab_size: 256, n_layer: 4, n_head: 4, d_model: 256, max_seq_len: 128}
lora: {rank: 8, alpha: 16, targets: [attn.qkv, attn.proj]}
data: {train: $work/train.txt, format: text, seq_len: 128}
train: {mode: lora, micro_batch: 8, grad_accum: 1, steps: $steps, lr: 1.0e-3, warmup_steps: 0,
        schedule: constant, eval_every: 0, log_every: $log_every}
checkpoint: {every: 0, keep: 1}
device: {backend: cpu, threads: 1}
comm: {bucket_mb: 25, overlap: true}
EOF

mpi=(mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)
manifest="$work/manifest.jsonl"
: > "$manifest"

# run GROUP LABEL NP BIND MODE OVERLAP BUCKET_MB [STEPS]
run() {
  local group=$1 label=$2 np=$3 bind=$4 mode=$5 overlap=$6 bucket_mb=$7 n_steps=${8:-$steps}
  local dir="$work/runs/$label"
  local cmd=("${mpi[@]}" --bind-to "$bind" -np "$np" "$lora" train "$work/config.yaml"
             --set "run.output_dir=$dir" --set "train.mode=$mode" --set "comm.overlap=$overlap"
             --set "comm.bucket_mb=$bucket_mb" --set "train.steps=$n_steps" --resume none)
  local t0 t1 rc attempt
  for attempt in 1 2; do
    rm -rf "$dir"
    t0=$(date +%s.%N)
    rc=0
    "${cmd[@]}" > "$work/$label.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    # 75: stopped by SIGTERM/SIGUSR1 from outside after a checkpoint; the run is incomplete, redo it.
    [[ $rc == 75 && $attempt == 1 ]] || break
    echo "scaling.sh: run $label was stopped by a signal from outside (exit 75); running it again" >&2
  done
  if [[ $rc != 0 ]]; then
    echo "scaling.sh: run $label failed (exit $rc):" >&2
    tail -20 "$work/$label.log" >&2
    exit 1
  fi
  python3 - "$manifest" "$group" "$label" "$np" "$bind" "$mode" "$overlap" "$bucket_mb" "$dir" \
    "$t0" "$t1" "${cmd[*]}" <<'EOF'
import json, sys
(manifest, group, label, np, bind, mode, overlap, bucket_mb, d, t0, t1, cmd) = sys.argv[1:]
with open(manifest, "a") as f:
    f.write(json.dumps({"group": group, "label": label, "np": int(np), "bind": bind, "mode": mode,
                        "overlap": overlap == "true", "bucket_mb": float(bucket_mb), "dir": d,
                        "seconds": float(t1) - float(t0), "command": cmd}) + "\n")
EOF
  echo "scaling.sh: $label done in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s" >&2
}

bucket() {
  local mode=$1 mb=$2
  echo "{\"bucket\": $("$bucket_count" --layers 4 --d-model 256 --heads 4 --vocab 256 --rank 8 \
    --targets attn.qkv,attn.proj --mode "$mode" --bucket-mb "$mb")}" >> "$manifest"
}

start=$(date +%s)
# 1. Weak scaling, alternating so that drift in the machine's load shows up in both.
for bind in none core; do
  for i in $(seq 1 "$repeats"); do
    run weak "np1-$bind-$i" 1 "$bind" lora true 25
    run weak "np2-$bind-$i" 2 "$bind" lora true 25
  done
done
# 2. Exposed communication at 2 ranks: overlap on/off, one bucket (25 MB) and several (0.05 and
#    0.02 MB: 2 and 10 buckets for this model).
for mb in 25 0.05 0.02; do
  bucket lora "$mb"
done
for i in $(seq 1 "$repeats"); do
  for mb in 25 0.05 0.02; do
    run comm "np2-overlap-on-$mb-$i" 2 none lora true "$mb"
    run comm "np2-overlap-off-$mb-$i" 2 none lora false "$mb"
  done
done
# 3. Bytes per step, LoRA vs full (a few steps suffice for bytes; full mode is slower).
run mode "np2-lora" 2 none lora true 25 $((2 * log_every))
run mode "np2-full" 2 none full true 25 $((2 * log_every))
end=$(date +%s)

cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "## Data-parallel scaling on one CPU machine (bench/scaling.sh)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host CPU: $cpu; $(nproc) CPUs online;" \
     "load average before the summary: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- $(mpirun --version 2>/dev/null | head -1); lora at $lora"
echo "- model: GPT-2 style, 4 layers, d_model 256, 4 heads, vocab 256 (bytes), seq 128," \
     "micro_batch 8 per rank, LoRA r 8 (alpha 16) on attn.qkv+attn.proj, AdamW," \
     "device.threads 1, OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1"
echo "- data: $data_source; $steps steps per run (lora/full bytes runs: $((2 * log_every)))," \
     "log_every $log_every; the first window is warm-up and excluded"
echo "- the 2 ranks share one machine: the all-reduce goes through shared memory, not a network;" \
     "total time $((end - start)) s"
echo
echo "Config (each run overrides run.output_dir, train.mode, comm.overlap, comm.bucket_mb, train.steps):"
echo
echo '```yaml'
cat "$work/config.yaml"
echo '```'
echo
python3 "$root/bench/summarize.py" "$manifest"
