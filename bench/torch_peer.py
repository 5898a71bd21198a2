#!/usr/bin/env python3
"""The PyTorch eager peer of bench_train: the same GPT-2 shape with LoRA adapters the way PEFT
builds them (frozen base Linear/Conv1D weights, trainable A and B, y = base(x) + s * (x A) B),
AdamW on the trainable parameters, same threads, batch and sequence length. Prints one JSON object
with the same fields as bench_train.

  torch_peer.py --layers 4 --d-model 256 --heads 4 --vocab 256 --seq 128 --batch 8 --rank 8
                --targets attn.qkv,attn.proj --mode lora --threads 1 --steps 10 --warmup 2
"""
import argparse
import json
import math
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


# BLAS and OpenMP thread pools read these when torch loads: set them first so that "--threads N"
# means N threads for the matrix products too, as it does for bench_train.
os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = _threads_from_argv()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class LoraConv1D(nn.Module):
    """GPT-2's Conv1D (y = x W + b, W [d_in, d_out]) with an optional LoRA adapter."""

    def __init__(self, d_in, d_out, rank, alpha, adapted, full):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) * 0.02, requires_grad=full)
        self.bias = nn.Parameter(torch.zeros(d_out), requires_grad=full)
        self.adapted = adapted and not full
        if self.adapted:
            self.lora_A = nn.Parameter(torch.randn(d_in, rank) / rank)
            self.lora_B = nn.Parameter(torch.zeros(rank, d_out))
            self.scaling = alpha / rank

    def forward(self, x):
        y = torch.addmm(self.bias, x.view(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)
        if self.adapted:
            y = y + (x @ self.lora_A @ self.lora_B) * self.scaling
        return y


class Block(nn.Module):
    def __init__(self, C, H, rank, alpha, targets, full):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_attn = LoraConv1D(C, 3 * C, rank, alpha, "attn.qkv" in targets, full)
        self.c_proj = LoraConv1D(C, C, rank, alpha, "attn.proj" in targets, full)
        self.c_fc = LoraConv1D(C, 4 * C, rank, alpha, "mlp.fc" in targets, full)
        self.mlp_proj = LoraConv1D(4 * C, C, rank, alpha, "mlp.proj" in targets, full)
        for p in list(self.ln_1.parameters()) + list(self.ln_2.parameters()):
            p.requires_grad = full

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, self.H, C // self.H).transpose(1, 2)
        k = k.view(B, T, self.H, C // self.H).transpose(1, 2)
        v = v.view(B, T, self.H, C // self.H).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.H))
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, a, full):
        super().__init__()
        self.wte = nn.Parameter(torch.randn(a.vocab, a.d_model) * 0.02, requires_grad=full)
        self.wpe = nn.Parameter(torch.randn(max(a.seq, 128), a.d_model) * 0.02, requires_grad=full)
        targets = a.targets.split(",")
        self.h = nn.ModuleList(Block(a.d_model, a.heads, a.rank, 2 * a.rank, targets, full) for _ in range(a.layers))
        self.ln_f = nn.LayerNorm(a.d_model)
        for p in self.ln_f.parameters():
            p.requires_grad = full

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte[idx] + self.wpe[:T]
        for b in self.h:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    p = argparse.ArgumentParser()
    for k, v in dict(layers=4, d_model=256, heads=4, vocab=256, seq=128, batch=8, rank=8, threads=1, steps=10, warmup=2).items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    p.add_argument("--targets", default="attn.qkv,attn.proj")
    p.add_argument("--mode", default="lora")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    full = a.mode == "full"
    model = GPT(a, full)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    times = []
    for s in range(a.warmup + a.steps):
        idx = torch.randint(0, a.vocab, (a.batch, a.seq))
        tgt = torch.randint(0, a.vocab, (a.batch, a.seq))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(idx, tgt)
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
    print(json.dumps(dict(impl="pytorch", torch=torch.__version__, blas=blas, mode=a.mode, threads=a.threads, layers=a.layers,
                          d_model=a.d_model, vocab=a.vocab, seq=a.seq, batch=a.batch, rank=a.rank,
                          targets=a.targets, trainable=sum(q.numel() for q in params),
                          step_s_median=round(med, 5), step_s_min=round(times[0], 5),
                          tokens_per_s=round(a.batch * a.seq / med, 1),
                          peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1))))


if __name__ == "__main__":
    main()
