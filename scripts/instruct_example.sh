#!/usr/bin/env bash
# An instruction fine-tune on text Debian ships: pretrain a small Llama-family model on the
# manual pages' one-line descriptions, then LoRA-fine-tune it to answer "What does the command `X`
# do?" in the chatml format, and show validation loss and answers before and after.
#   1. scripts/make_whatis_dataset.py: command -> description pairs from the whatis database,
#      split train/val by command (about 1 in 10 commands is held out)
#   2. scripts/train_tokenizer.py: a byte-level BPE tokenizer (2048 tokens, chatml special tokens)
#      trained with Hugging Face tokenizers on the training answers
#   3. lora train configs/instruct-pretrain.yaml: full-mode pretraining on the training answers
#   4. lora train configs/instruct-lora.yaml: LoRA on the chat examples, loss on the answers only
#   5. lora eval and lora generate --chat, before and after
# Its two training runs take about 3 and 4 minutes on 2 cores; outputs in runs/instruct/.
set -euo pipefail
cd "$(dirname "$0")/.."
lora=${LORA_BIN:-build/lora}  # LORA_BIN: an already built binary (skips set-up and build)
if [[ -z ${LORA_BIN:-} ]]; then
  bash scripts/setup.sh
  LORA_BUILD_TARGETS=lora bash scripts/build.sh
fi
out=runs/instruct
[[ -x .venv/bin/python ]] || { echo "instruct_example: .venv is missing (scripts/setup_python.sh)" >&2; exit 2; }

banner() { printf '\n==== %s ====\n' "$*"; }

banner "1. the whatis dataset"
/usr/bin/python3 scripts/make_whatis_dataset.py "$out/data"
# The pretraining text: the answers of the training split, one per line.
/usr/bin/python3 - "$out/data" <<'PY'
import json, sys
d = sys.argv[1]
with open(f"{d}/train.jsonl") as f, open(f"{d}/answers.txt", "w") as out:
    for line in f:
        out.write(json.loads(line)["messages"][-1]["content"] + "\n")
PY
head -n 3 "$out/data/train.jsonl"

banner "2. a tokenizer trained on the training answers"
.venv/bin/python scripts/train_tokenizer.py "$out/tokenizer" "$out/data/answers.txt"

banner "3. pretraining (full mode)"
"$lora" train configs/instruct-pretrain.yaml
cp "$out/tokenizer/tokenizer.json" "$out/tokenizer/tokenizer_config.json" "$out/pretrain/"

questions=("What does the command \`ls\` do?" "What is \`grep\` used for?" "What does the command \`tar\` do?")
# Two commands of the validation split (never seen in training).
mapfile -t held_out < <(/usr/bin/python3 -c "
import json
for line in list(open('$out/data/val.jsonl'))[:2]:
    print(json.loads(line)['messages'][0]['content'])")
questions+=("${held_out[@]}")

ask() {  # ask ADAPTER_ARGS...: every question, greedy
  for q in "${questions[@]}"; do
    printf '  Q: %s\n  A: %s\n' "$q" "$("$lora" generate configs/instruct-lora.yaml "$@" --chat --prompt "$q" --tokens 40)"
  done
}

banner "4. before fine-tuning (the pretrained model, chatml prompts)"
before_eval=$("$lora" eval configs/instruct-lora.yaml)
echo "$before_eval"
before=$(ask)
echo "$before"

banner "5. LoRA instruction tuning"
"$lora" train configs/instruct-lora.yaml
ckpt=$(ls -1 "$out"/lora/checkpoints/ckpt-*.h5 | sort -t- -k2 -n | tail -n 1)

banner "6. after fine-tuning"
after_eval=$("$lora" eval configs/instruct-lora.yaml --adapter "$ckpt")
echo "$after_eval"
after=$(ask --adapter "$ckpt")
echo "$after"

banner "summary"
echo "  val loss (answers of held-out commands) before: ${before_eval%% |*}   after: ${after_eval%% |*}"
echo "  before:"; echo "$before" | sed 's/^/  /'
echo "  after:"; echo "$after" | sed 's/^/  /'
