#!/usr/bin/env bash
# Side-by-side CPU training-step benchmark: lora (bench_train) vs PyTorch eager with the same LoRA
# (bench/torch_peer.py) on the same shape, threads and batch, alternating runs so that machine
# noise hits both alike. Prints a markdown table of median tokens/s and the ratio, plus peak memory
# of lora vs full mode. Run from the repository root after scripts/build.sh.
#
#   bench/cpu_compare.sh [REPEATS]        (default 3)
#
# Environment: whatever OpenBLAS settings are in the environment (OPENBLAS_CORETYPE) apply to both
# implementations; the OpenBLAS core in use is printed. lora links the OpenMP build of OpenBLAS;
# Debian's PyTorch uses the system libblas.so.3 (the pthreads build by default). The peer runs
# twice: as installed, and with the OpenMP build put first on LD_LIBRARY_PATH (the same BLAS as
# lora); the ratio is against the faster of the two.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
bench=build/bench/bench_train
peer="/usr/bin/python3 bench/torch_peer.py"
openmp_blas=/usr/lib/$(gcc -print-multiarch)/openblas-openmp
peer_omp="env LD_LIBRARY_PATH=$openmp_blas /usr/bin/python3 bench/torch_peer.py"
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
echo "| shape | threads | lora tok/s (median of $repeats) | PyTorch tok/s, as installed | PyTorch tok/s, OpenMP BLAS | ratio to the faster peer | lora step ms | best peer step ms |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for shape in small gpt2; do
  args=${!shape}
  steps=10; [[ $shape == gpt2 ]] && steps=4
  tokens=$((8 * 128)); [[ $shape == gpt2 ]] && tokens=$((4 * 128))  # per step, as in the shapes
  for threads in 1 2; do
    ours=() peer_a=() peer_b=()
    for ((i = 0; i < repeats; i++)); do
      ours+=("$($bench $args --threads $threads --steps $steps --warmup 2)")
      peer_a+=("$($peer $args --threads $threads --steps $steps --warmup 2)")
      peer_b+=("$($peer_omp $args --threads $threads --steps $steps --warmup 2)")
    done
    tok() { for j in "$@"; do field tokens_per_s "$j"; done; }
    mo=$(median $(tok "${ours[@]}")); ma=$(median $(tok "${peer_a[@]}")); mb=$(median $(tok "${peer_b[@]}"))
    best=$(python3 -c "print(max($ma, $mb))")
    list() { tok "$@" | cut -d. -f1 | paste -sd/; }
    printf '| %s | %d | %.0f (%s) | %.0f (%s) | %.0f (%s) | %.2fx | %.1f | %.1f |\n' "$shape" "$threads" \
      "$mo" "$(list "${ours[@]}")" "$ma" "$(list "${peer_a[@]}")" "$mb" "$(list "${peer_b[@]}")" \
      "$(python3 -c "print($mo / $best)")" "$(python3 -c "print(1000 * $tokens / $mo)")" \
      "$(python3 -c "print(1000 * $tokens / $best)")"
  done
done
echo
echo "shapes: small = 4 layers, d_model 256, 4 heads, vocab 256, seq 128, micro-batch 8;"
echo "gpt2 = GPT-2 124M (12 layers, d_model 768, 12 heads, vocab 50257), seq 128, micro-batch 4."
echo
echo "## Peak memory, lora vs full mode (1 thread, peak RSS of the whole process; PyTorch as installed)"
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
