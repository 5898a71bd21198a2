#!/usr/bin/env bash
# Side-by-side CPU training-step benchmark: lora (bench_train) vs PyTorch eager with the same LoRA
# (bench/torch_peer.py) on the same shape, threads and batch, alternating runs so that machine
# noise hits both alike. Prints a markdown table of median tokens/s and the ratio, plus peak memory
# of lora vs full mode. Run from the repository root after scripts/build.sh.
#
#   bench/cpu_compare.sh [REPEATS]        (default 3)
#
# Environment: whatever OpenBLAS settings are in the environment apply to both implementations
# (they link the same libopenblas); the OpenBLAS core in use is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
bench=build/bench/bench_train
peer="/usr/bin/python3 bench/torch_peer.py"
[[ -x $bench ]] || { echo "build first: bash scripts/build.sh" >&2; exit 2; }

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }
median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }

small="--layers 4 --d-model 256 --heads 4 --vocab 256 --seq 128 --batch 8 --rank 8 --targets attn.qkv,attn.proj"
gpt2="--layers 12 --d-model 768 --heads 12 --vocab 50257 --seq 128 --batch 4 --rank 8 --targets attn.qkv,attn.proj"

echo "# CPU training step: lora vs PyTorch eager (LoRA r=8 on attn.qkv+attn.proj)"
echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
     "OpenBLAS core: $($bench --steps 1 --warmup 0 --layers 1 --d-model 64 --heads 1 --seq 16 --batch 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["blas_core"])')" \
     "(OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}); torch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)')"
echo
echo "| shape | threads | lora tok/s (median of $repeats) | PyTorch tok/s | ratio | lora step ms | PyTorch step ms |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for shape in small gpt2; do
  args=${!shape}
  steps=10; [[ $shape == gpt2 ]] && steps=4
  for threads in 1 2; do
    ours=() theirs=() ours_ms=() theirs_ms=()
    for ((i = 0; i < repeats; i++)); do
      o=$($bench $args --threads $threads --steps $steps --warmup 2)
      t=$($peer $args --threads $threads --steps $steps --warmup 2)
      ours+=("$(field tokens_per_s "$o")"); theirs+=("$(field tokens_per_s "$t")")
      ours_ms+=("$(field step_s_median "$o")"); theirs_ms+=("$(field step_s_median "$t")")
    done
    mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}")
    printf '| %s | %d | %.0f (%s) | %.0f (%s) | %.2fx | %.1f | %.1f |\n' "$shape" "$threads" "$mo" \
      "$(IFS=/; echo "${ours[*]%.*}")" "$mt" "$(IFS=/; echo "${theirs[*]%.*}")" \
      "$(python3 -c "print($mo / $mt)")" \
      "$(python3 -c "print(1000 * $(median "${ours_ms[@]}"))")" "$(python3 -c "print(1000 * $(median "${theirs_ms[@]}"))")"
  done
done
echo
echo "shapes: small = 4 layers, d_model 256, 4 heads, vocab 256, seq 128, micro-batch 8;"
echo "gpt2 = GPT-2 124M (12 layers, d_model 768, 12 heads, vocab 50257), seq 128, micro-batch 4."
echo
echo "## Peak memory, lora vs full mode (1 thread, peak RSS of the whole process)"
echo
echo "| shape | lora MiB | full MiB | PyTorch lora MiB | PyTorch full MiB |"
echo "| --- | --- | --- | --- | --- |"
for shape in small gpt2; do
  args=${!shape}
  row="| $shape"
  for impl in "$bench" "$peer"; do
    for mode in lora full; do
      row+=" | $(field peak_rss_mib "$($impl $args --threads 1 --steps 2 --warmup 1 --mode $mode)")"
    done
  done
  echo "$row |"
done
