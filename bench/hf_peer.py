#!/usr/bin/env python3
"""The peer users would pick for LoRA on a Llama-family model on CPU: transformers'
LlamaForCausalLM with PEFT adapters, AdamW on the adapters, the same shape, LoRA, threads, batch and
sequence length as bench_train. Prints one JSON object with the same fields as bench_train.
Run it with the project's reference environment (.venv/bin/python: Debian's torch with
transformers and PEFT).

  hf_peer.py --layers 8 --d-model 512 --heads 8 --kv-heads 2 --d-ff 1408 --vocab 32000 --seq 256
             --batch 4 --rank 16 --targets all-linear --threads 1 --steps 5 --warmup 1
"""
import argparse
import json
import os
import resource
import sys
import time


def _threads_from_argv():
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


# The BLAS and OpenMP pools read these when torch loads: "--threads N" means N threads for the
# matrix products too, as it does for bench_train.
os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = _threads_from_argv()

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    for k, v in dict(layers=8, d_model=512, heads=8, kv_heads=2, d_ff=1408, vocab=32000, seq=256,
                     batch=4, rank=16, threads=1, steps=5, warmup=1).items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    p.add_argument("--targets", default="all-linear")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.d_model, intermediate_size=a.d_ff,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads,
                         num_key_value_heads=a.kv_heads, max_position_embeddings=max(a.seq, 2048),
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)  # sdpa attention, as from_pretrained would give by default
    targets = "all-linear" if a.targets == "all-linear" else a.targets.split(",")
    lora = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=targets, lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    times = []
    for s in range(a.warmup + a.steps):
        idx = torch.randint(0, a.vocab, (a.batch, a.seq))
        tgt = torch.randint(0, a.vocab, (a.batch, a.seq))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=idx).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, a.vocab), tgt.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
    times.sort()
    med = times[len(times) // 2]
    blas = "unknown"
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libblas" in line or "libopenblas" in line:
                blas = line.split()[-1]
                break
    print(json.dumps(dict(
        impl="transformers+peft", torch=torch.__version__, blas=blas, threads=a.threads,
        layers=a.layers, d_model=a.d_model, vocab=a.vocab, seq=a.seq, batch=a.batch, rank=a.rank,
        targets=a.targets, trainable=sum(q.numel() for q in params), step_s_median=round(med, 5),
        step_s_min=round(times[0], 5), tokens_per_s=round(a.batch * a.seq / med, 1),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1))))


if __name__ == "__main__":
    main()
