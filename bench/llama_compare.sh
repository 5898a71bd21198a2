#!/usr/bin/env bash
# Side-by-side CPU LoRA training step on a Llama shape: lora (bench_train --arch llama) vs the peer
# users would pick, transformers' LlamaForCausalLM + PEFT (bench/hf_peer.py, in the project's
# .venv), with the same shape, LoRA (r 16 on every linear), threads and batch, alternating runs so
# that machine noise hits both alike. Prints a markdown table of median tokens/s, the ratio, and
# peak RSS. Run from the repository root after scripts/build.sh and scripts/setup.sh.
#
#   bench/llama_compare.sh [REPEATS]        (default 3)
#
# The peer runs twice, as installed (Debian's torch on the system libblas.so.3) and with the OpenMP
# build of OpenBLAS first on LD_LIBRARY_PATH (the BLAS lora links); the ratio is against the faster.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
bench=${BENCH_TRAIN:-build/bench/bench_train}
py=.venv/bin/python
openmp_blas=/usr/lib/$(gcc -print-multiarch)/openblas-openmp
[[ -x $bench ]] || { echo "build first: bash scripts/build.sh" >&2; exit 2; }
[[ -x $py ]] || { echo "no .venv: bash scripts/setup_python.sh" >&2; exit 2; }

field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }
median() { /usr/bin/python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }

shape="--layers 8 --d-model 512 --heads 8 --kv-heads 2 --d-ff 1408 --vocab 32000 --seq 256 --batch 4 --rank 16 --targets all-linear"
steps=4
tokens=$((4 * 256))

echo "# CPU LoRA step on a Llama shape: lora vs transformers + PEFT"
echo
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
     "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; torch $($py -c 'import torch; print(torch.__version__)'), " \
     "transformers $($py -c 'import transformers; print(transformers.__version__)'), peft $($py -c 'import peft; print(peft.__version__)')"
echo
echo "shape: 8 layers, d_model 512, 8 heads (2 KV heads), d_ff 1408, vocab 32000, untied head;" \
     "seq 256, micro-batch 4; LoRA r 16, alpha 32 on every linear (q,k,v,o,gate,up,down); AdamW;" \
     "median of $repeats runs of $steps timed steps after 1 warm-up step."
echo
echo "| threads | lora tok/s | peer tok/s, as installed | peer tok/s, OpenMP BLAS | ratio to the faster peer | lora peak RSS MiB | peer peak RSS MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for threads in 1 2; do
  ours=() peer_a=() peer_b=()
  for ((i = 0; i < repeats; i++)); do
    ours+=("$($bench --arch llama $shape --threads $threads --steps $steps --warmup 1)")
    peer_a+=("$($py bench/hf_peer.py $shape --threads $threads --steps $steps --warmup 1)")
    peer_b+=("$(LD_LIBRARY_PATH=$openmp_blas $py bench/hf_peer.py $shape --threads $threads --steps $steps --warmup 1)")
  done
  tok() { for j in "$@"; do field tokens_per_s "$j"; done; }
  rss() { for j in "$@"; do field peak_rss_mib "$j"; done; }
  mo=$(median $(tok "${ours[@]}")); ma=$(median $(tok "${peer_a[@]}")); mb=$(median $(tok "${peer_b[@]}"))
  best=$(/usr/bin/python3 -c "print(max($ma, $mb))")
  list() { tok "$@" | cut -d. -f1 | paste -sd/; }
  printf '| %d | %.0f (%s) | %.0f (%s) | %.0f (%s) | %.2fx | %.0f | %.0f |\n' "$threads" \
    "$mo" "$(list "${ours[@]}")" "$ma" "$(list "${peer_a[@]}")" "$mb" "$(list "${peer_b[@]}")" \
    "$(/usr/bin/python3 -c "print($mo / $best)")" "$(median $(rss "${ours[@]}"))" \
    "$(median $(rss "${peer_a[@]}" "${peer_b[@]}"))"
done
echo
echo "per step: $tokens tokens."
