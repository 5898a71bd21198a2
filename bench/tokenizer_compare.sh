#!/usr/bin/env bash
# Tokenizer speed, ours against Hugging Face tokenizers, for every tokenizer style the tests use,
# and the multi-threaded 100 MB corpus path. Run from the repository root after building:
#
#   bash bench/tokenizer_compare.sh [WORK_DIR] [MB]
#
# Trains the reference tokenizers (tests/core/tokenizer_reference.py, in .venv), writes an MB-MB
# Debian text (bench/debian_corpus.py, default 4) and a 100 MB one, then runs build/bench/
# tokenizer_bench for each style with chunks of 1 KiB and 64 KiB (3 repeats, medians), and the
# corpus mode on all threads and on one, with /usr/bin/time for the peak resident memory.
set -euo pipefail
work=${1:-/tmp/lora_tokenizer_bench}
mb=${2:-4}
py=.venv/bin/python
bench=build/bench/tokenizer_bench
mkdir -p "$work"
[[ -f $work/tok/gpt2/tokenizer.json ]] || $py tests/core/tokenizer_reference.py train "$work/tok"
[[ -f $work/text.txt ]] || python3 bench/debian_corpus.py "$work/text.txt" --mb "$mb"
[[ -f $work/corpus100.txt ]] || python3 bench/debian_corpus.py "$work/corpus100.txt" --mb 100

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for style in gpt2 llama3 qwen2 sp sp_metaspace; do
  for kb in 1 64; do
    echo "== $style, chunks of $kb KiB"
    $bench "$work/tok/$style/tokenizer.json" "$work/text.txt" --repeats 3 --chunk-kb "$kb" | tail -4
  done
done
for style in gpt2 sp; do
  for threads in 0 1; do
    /usr/bin/time -f "wall %e s, peak RSS %M KiB" \
      $bench "$work/tok/$style/tokenizer.json" "$work/corpus100.txt" --corpus "$work/c100.tokens" --threads "$threads"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
