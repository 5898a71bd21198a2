#!/usr/bin/python3
"""Writes a Hugging Face model directory of a Llama-family model with random BF16 weights, large
enough to measure loading (it needs no torch: numpy and the safetensors file format only).

  make_random_model.py OUT_DIR [--layers 18 --d-model 1536 --heads 12 --kv-heads 4 --d-ff 4096
                               --vocab 32000 --shards 2]

config.json as transformers writes it for LlamaForCausalLM (untied head), the tensors split over
`--shards` files named model-0000K-of-0000N.safetensors with model.safetensors.index.json. Values
are N(0, 0.02) rounded to BF16 (RMSNorm weights 1).
"""
import argparse
import json
import os
import struct

import numpy as np


def bf16_bits(x):
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    for k, v in dict(layers=18, d_model=1536, heads=12, kv_heads=4, d_ff=4096, vocab=32000,
                     shards=2).items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    hd = a.d_model // a.heads
    tensors = [("model.embed_tokens.weight", (a.vocab, a.d_model))]
    for l in range(a.layers):
        pre = f"model.layers.{l}."
        tensors += [(pre + "input_layernorm.weight", (a.d_model,)),
                    (pre + "self_attn.q_proj.weight", (a.heads * hd, a.d_model)),
                    (pre + "self_attn.k_proj.weight", (a.kv_heads * hd, a.d_model)),
                    (pre + "self_attn.v_proj.weight", (a.kv_heads * hd, a.d_model)),
                    (pre + "self_attn.o_proj.weight", (a.d_model, a.heads * hd)),
                    (pre + "post_attention_layernorm.weight", (a.d_model,)),
                    (pre + "mlp.gate_proj.weight", (a.d_ff, a.d_model)),
                    (pre + "mlp.up_proj.weight", (a.d_ff, a.d_model)),
                    (pre + "mlp.down_proj.weight", (a.d_model, a.d_ff))]
    tensors += [("model.norm.weight", (a.d_model,)), ("lm_head.weight", (a.vocab, a.d_model))]
    rng = np.random.default_rng(0)
    weight_map = {}
    total = 0
    for s in range(a.shards):
        name = f"model-{s + 1:05d}-of-{a.shards:05d}.safetensors"
        mine = tensors[s::a.shards]
        header, offset = {}, 0
        for tname, shape in mine:
            n = int(np.prod(shape))
            header[tname] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
            offset += 2 * n
            weight_map[tname] = name
        text = json.dumps(header).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        with open(os.path.join(a.out, name), "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for tname, shape in mine:
                n = int(np.prod(shape))
                if tname.endswith("norm.weight"):
                    f.write(bf16_bits(np.ones(n, np.float32)).tobytes())
                    continue
                for start in range(0, n, 1 << 24):
                    m = min(1 << 24, n - start)
                    f.write(bf16_bits(rng.standard_normal(m, dtype=np.float32) * 0.02).tobytes())
        total += offset
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "vocab_size": a.vocab, "hidden_size": a.d_model, "intermediate_size": a.d_ff,
              "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
              "num_key_value_heads": a.kv_heads, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "hidden_act": "silu", "torch_dtype": "bfloat16"}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    n_params = sum(int(np.prod(s)) for _, s in tensors)
    print(json.dumps({"dir": a.out, "params": n_params, "bf16_bytes": total,
                      "fp32_bytes": 4 * n_params}))


if __name__ == "__main__":
    main()
