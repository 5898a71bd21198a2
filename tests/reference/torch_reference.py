#!/usr/bin/env python3
"""Independent PyTorch reference for the GPT-2 + LoRA forward and backward.

Reads a case directory written by tests/reference/test_torch_reference.cpp:
  case.json             shape, LoRA settings, batch size and the module list
  base.safetensors      base weights, Hugging Face GPT-2 names (parsed here with struct + json)
  tokens.i32, targets.i32, lora.f32      inputs and the adapter buffer (layout from case.json)
  loss.f32, logits.f32, lora_grads.f32   what `lora` computed
Builds the same model in PyTorch (float64), computes loss, logits and adapter gradients, and
compares them with relative tolerance (max |diff| / max |reference| per tensor).
Exit 0 when everything matches, 1 with a report of the worst tensor otherwise.
"""
import json
import math
import struct
import sys

import numpy as np
import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        begin, end = meta["data_offsets"]
        arr = np.frombuffer(body[begin:end], dtype="<f4").reshape(meta["shape"])
        out[name] = torch.tensor(arr.astype(np.float64))
    return out


def main(case_dir, rtol):
    case = json.load(open(f"{case_dir}/case.json"))
    V, T_max, L, H, C = (case[k] for k in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model"))
    B, T = case["n_batch"], case["n_seq"]
    w = read_safetensors(f"{case_dir}/base.safetensors")
    tokens = torch.tensor(np.fromfile(f"{case_dir}/tokens.i32", dtype="<i4").reshape(B, T), dtype=torch.long)
    targets = torch.tensor(np.fromfile(f"{case_dir}/targets.i32", dtype="<i4").reshape(B, T), dtype=torch.long)
    lora_flat = np.fromfile(f"{case_dir}/lora.f32", dtype="<f4").astype(np.float64)
    scaling = case["scaling"]

    adapters = {}
    for m in case["modules"]:
        a = torch.tensor(lora_flat[m["a_offset"]:m["a_offset"] + m["d_in"] * m["rank"]].reshape(m["d_in"], m["rank"]), requires_grad=True)
        b = torch.tensor(lora_flat[m["b_offset"]:m["b_offset"] + m["rank"] * m["d_out"]].reshape(m["rank"], m["d_out"]), requires_grad=True)
        adapters[m["name"]] = (a, b)

    def linear(x, prefix):
        y = x @ w[prefix + ".weight"] + w[prefix + ".bias"]
        if prefix in adapters:
            a, b = adapters[prefix]
            y = y + scaling * ((x @ a) @ b)
        return y

    def layernorm(x, prefix):
        return torch.nn.functional.layer_norm(x, (C,), w[prefix + ".weight"], w[prefix + ".bias"], eps=1e-5)

    def gelu(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    hs = C // H
    x = w["wte.weight"][tokens] + w["wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(L):
        p = f"h.{l}"
        qkv = linear(layernorm(x, p + ".ln_1"), p + ".attn.c_attn")
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, H, hs).transpose(1, 2)
        k = k.view(B, T, H, hs).transpose(1, 2)
        v = v.view(B, T, H, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(o, p + ".attn.c_proj")
        h = gelu(linear(layernorm(x, p + ".ln_2"), p + ".mlp.c_fc"))
        x = x + linear(h, p + ".mlp.c_proj")
    x = layernorm(x, "ln_f")
    logits = x @ w["wte.weight"].T
    loss = torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1))
    loss.backward()

    failures = []

    def compare(name, ours, ref):
        ref = ref.detach().numpy().astype(np.float64).ravel()
        ours = ours.astype(np.float64).ravel()
        if ours.shape != ref.shape:
            failures.append(f"{name}: shape {ours.shape} vs reference {ref.shape}")
            return
        scale = max(np.abs(ref).max(), 1e-30)
        err = np.abs(ours - ref).max() / scale
        status = "ok" if err <= rtol else "MISMATCH"
        print(f"{name:32s} max|ref| {scale:.3e}  rel.err {err:.3e}  {status}")
        if err > rtol:
            failures.append(f"{name}: relative error {err:.3e} > {rtol:.1e}")

    compare("loss", np.fromfile(f"{case_dir}/loss.f32", dtype="<f4"), loss.reshape(1))
    compare("logits", np.fromfile(f"{case_dir}/logits.f32", dtype="<f4"), logits)
    grads = np.fromfile(f"{case_dir}/lora_grads.f32", dtype="<f4")
    for m in case["modules"]:
        a, b = adapters[m["name"]]
        compare(m["name"] + ".A.grad", grads[m["a_offset"]:m["a_offset"] + a.numel()], a.grad)
        compare(m["name"] + ".B.grad", grads[m["b_offset"]:m["b_offset"] + b.numel()], b.grad)
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all tensors match the PyTorch reference")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1e-4))
