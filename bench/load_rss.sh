#!/usr/bin/env bash
# Peak RSS of loading a large Hugging Face model directory (BF16 shards) into the float32 CPU model:
# writes a random ~550M-parameter Llama-family model (1.1 GB of BF16 in 2 shards; 2.2 GB as
# float32) with bench/make_random_model.py, then runs `lora eval` on it (one 64-token window: load,
# one forward, exit) and reports the process's peak RSS against the float32 model's size.
#
#   bench/load_rss.sh [WORK_DIR]        (default: a temporary directory, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
[[ $# -ge 1 ]] || trap 'rm -rf "$work"' EXIT
lora=${LORA_BIN:-build/lora}
[[ -x $lora ]] || { echo "build first: bash scripts/build.sh" >&2; exit 2; }
info=$(/usr/bin/python3 bench/make_random_model.py "$work/model")
fp32=$(/usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1])['fp32_bytes'])" "$info")
head -c 20000 /usr/share/common-licenses/GPL-3 > "$work/val.txt"
cat > "$work/eval.yaml" <<YAML
run: {name: load-rss, output_dir: $work/out}
model: {path: $work/model}
lora: {targets: [q_proj, v_proj]}
data: {train: $work/val.txt, val: $work/val.txt, format: text, seq_len: 64}
train: {micro_batch: 1, eval_batches: 1}
device: {threads: 2}
YAML
start=$(date +%s.%N)
peak_kib=$(/usr/bin/python3 - "$work/eval.yaml" "$lora" <<'PY'
import resource, subprocess, sys
r = subprocess.run([sys.argv[2], "eval", sys.argv[1]], stdout=subprocess.PIPE, text=True)
sys.stderr.write(r.stdout)
if r.returncode != 0:
    sys.exit(r.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
PY
)
end=$(date +%s.%N)
/usr/bin/python3 - "$info" "$peak_kib" "$start" "$end" <<'PY'
import json, sys
info, peak_kib, t0, t1 = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
fp32 = info["fp32_bytes"]
peak = peak_kib * 1024
print(f"model: {info['params'] / 1e6:.0f}M parameters, {info['bf16_bytes'] / 2**30:.2f} GiB BF16 on disk,"
      f" {fp32 / 2**30:.2f} GiB as float32")
print(f"lora eval (load + one 64-token window): peak RSS {peak / 2**30:.2f} GiB = {peak / fp32:.3f} x the"
      f" float32 model; {t1 - t0:.1f} s wall")
PY
