#!/usr/bin/env bash
# The demo: install what is missing, build, pretrain a small byte-level Llama-family model on one
# domain of the Debian fortunes corpus (computers), then LoRA-fine-tune it on another (songs and
# poems) and show what changed: trainable vs total parameters, validation loss and a generated
# sample before and after, and the bytes a data-parallel step would all-reduce for LoRA vs full
# fine-tuning. (configs/demo-gpt2-*.yaml are the same demo with a GPT-2 base.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LORA_BUILD_TARGETS=lora bash scripts/build.sh
lora=build/lora

corpus=/usr/share/games/fortunes
data=runs/demo/data
mkdir -p "$data"
# 90% / 10% train / validation split of each domain, cut at a fortune boundary ('%' line).
split() {
  local name=$1 src=$corpus/$1
  [[ -f $src ]] || { echo "demo: $src not found (package fortunes)" >&2; exit 2; }
  local lines cut
  lines=$(wc -l < "$src")
  cut=$(awk -v n="$lines" 'NR >= n * 0.9 && /^%$/ { print NR; exit }' "$src")
  head -n "$cut" "$src" > "$data/$name.train.txt"
  tail -n +"$((cut + 1))" "$src" > "$data/$name.val.txt"
}
split computers
split songs-poems

banner() { printf '\n==== %s ====\n' "$*"; }
prompt="The moon "

banner "1. pretrain a Llama-family base model on fortunes/computers (full mode)"
"$lora" train configs/demo-pretrain.yaml

banner "2. before fine-tuning: the base on fortunes/songs-poems"
before_eval=$("$lora" eval configs/demo-lora.yaml)
echo "$before_eval"
before_sample=$("$lora" generate configs/demo-lora.yaml --prompt "$prompt" --tokens 200 --temperature 0.7 --seed 3)
echo "$before_sample"

banner "3. LoRA fine-tuning on fortunes/songs-poems (base frozen)"
"$lora" train configs/demo-lora.yaml | tee runs/demo/lora.log
ckpt=$(ls -1 runs/demo/lora/checkpoints/ckpt-*.h5 | sort -t- -k2 -n | tail -n 1)

banner "4. after fine-tuning"
after_eval=$("$lora" eval configs/demo-lora.yaml --adapter "$ckpt")
echo "$after_eval"
after_sample=$("$lora" generate configs/demo-lora.yaml --adapter "$ckpt" --prompt "$prompt" --tokens 200 --temperature 0.7 --seed 3)
echo "$after_sample"

banner "summary"
grep -E '^lora: (params|all-reduce)' runs/demo/lora.log | sed 's/^lora: /  /'
echo "  val loss on songs-poems before: ${before_eval%% |*}   after: ${after_eval%% |*}"
echo "  adapter checkpoint: $ckpt (inspect it with: $lora inspect $ckpt)"
echo
echo "  sample before (base):"
echo "$before_sample" | sed 's/^/    | /'
echo "  sample after (base + LoRA):"
echo "$after_sample" | sed 's/^/    | /'
