#!/usr/bin/env bash
# The CPU step against its two yardsticks, side by side in one run: the BLAS's own sgemm FLOP/s on
# the step's products (bench/roofline: the fraction) and PyTorch eager with the same LoRA and the
# same OpenBLAS build (the OpenMP one lora links, put first on LD_LIBRARY_PATH for the peer), on
# the three shapes of docs/benchmarks.md, at 1 and 2 threads; also the fraction of the stricter
# rate sgemm reaches on the base linears' and LM head's products alone. Runs alternate lora / peer so that
# machine noise hits both alike; the table gives medians. Run from the repository root after
# scripts/build.sh (and scripts/setup.sh for the Llama peer's .venv).
#
#   bench/roofline_compare.sh [REPEATS]        (default 3)
#   ROOFLINE=path/to/roofline bench/roofline_compare.sh   (another build)
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
roofline=${ROOFLINE:-build/bench/roofline}
openmp_blas=/usr/lib/$(gcc -print-multiarch)/openblas-openmp
[[ -x $roofline ]] || { echo "build first: bash scripts/build.sh" >&2; exit 2; }
[[ -x .venv/bin/python ]] || { echo "no .venv: bash scripts/setup_python.sh" >&2; exit 2; }

field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }
median() { /usr/bin/python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }

small="--layers 4 --d-model 256 --heads 4 --vocab 256 --seq 128 --batch 8 --rank 8 --targets attn.qkv,attn.proj"
gpt2="--layers 12 --d-model 768 --heads 12 --vocab 50257 --seq 128 --batch 4 --rank 8 --targets attn.qkv,attn.proj"
llama="--arch llama --layers 8 --d-model 512 --heads 8 --kv-heads 2 --d-ff 1408 --vocab 32000 --seq 256 --batch 4 --rank 16 --targets all-linear"
peer_small="env LD_LIBRARY_PATH=$openmp_blas /usr/bin/python3 bench/torch_peer.py $small"
peer_gpt2="env LD_LIBRARY_PATH=$openmp_blas /usr/bin/python3 bench/torch_peer.py $gpt2"
# hf_peer.py takes the shape without --arch (it is always LlamaForCausalLM).
peer_llama="env LD_LIBRARY_PATH=$openmp_blas .venv/bin/python bench/hf_peer.py ${llama#--arch llama }"

echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
     "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; median of $repeats alternating runs"
echo
echo "| shape | threads | step ms | achieved GFLOP/s | sgemm GFLOP/s | fraction (runs) | fraction of linears' sgemm | lora tok/s | PyTorch tok/s | ratio | lora RSS MiB | PyTorch RSS MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for shape in small gpt2 llama; do
  args=${!shape}
  peer_var=peer_$shape
  steps=8; [[ $shape != small ]] && steps=3
  for threads in 1 2; do
    ours=() peer=()
    for ((i = 0; i < repeats; i++)); do
      ours+=("$($roofline $args --threads $threads --steps $steps --warmup 1 | tail -n 1)")
      peer+=("$(${!peer_var} --threads $threads --steps $steps --warmup 1)")
    done
    get() { local k=$1; shift; for j in "$@"; do field "$k" "$j"; done; }
    mo=$(median $(get tokens_per_s "${ours[@]}")); mp=$(median $(get tokens_per_s "${peer[@]}"))
    printf '| %s | %d | %.1f | %.1f | %.1f | %.3f (%s) | %.3f | %.0f | %.0f | %.2fx | %.0f | %.0f |\n' \
      "$shape" "$threads" "$(/usr/bin/python3 -c "print(1000 * $(median $(get step_s "${ours[@]}")))")" \
      "$(median $(get achieved_gflops "${ours[@]}"))" "$(median $(get sgemm_gflops "${ours[@]}"))" \
      "$(median $(get fraction "${ours[@]}"))" "$(get fraction "${ours[@]}" | cut -c1-5 | paste -sd/)" \
      "$(median $(get fraction_of_large "${ours[@]}"))" \
      "$mo" "$mp" "$(/usr/bin/python3 -c "print($mo / $mp)")" \
      "$(median $(get peak_rss_mib "${ours[@]}"))" "$(median $(get peak_rss_mib "${peer[@]}"))"
  done
done
echo
echo "shapes: small = 4 layers, d_model 256, 4 heads, vocab 256, seq 128, micro-batch 8, r 8 on attn.qkv+attn.proj;"
echo "gpt2 = GPT-2 124M (12 layers, d_model 768, 12 heads, vocab 50257), seq 128, micro-batch 4, r 8 on attn.qkv+attn.proj;"
echo "llama = 8 layers, d_model 512, 8 heads (2 KV), d_ff 1408, vocab 32000, seq 256, micro-batch 4, r 16 on every linear."
