"""Reference computations with Hugging Face transformers and PEFT, for tests/reference/*.cpp.

usage: hf_reference.py COMMAND FILE [COMMAND FILE ...] (the pairs run in order, in one process)
  hf_reference.py make CASES.json
      CASES.json: [{"family": "llama", "dir": OUT_DIR, "seed": 1, "config": {...}}, ...]
      Builds each random model with transformers itself (config class + from_config), with weights
      of a standard deviation large enough that a wrong convention moves the loss far beyond the
      tolerances, and saves it with save_pretrained (config.json + model.safetensors). Optional
      "torch_dtype" ("bfloat16", "float16") saves it in that dtype, "max_shard_size" ("20KB")
      in shards with model.safetensors.index.json.
  hf_reference.py run JOBS.json
      JOBS.json: [{"model": DIR, "inputs": IN.safetensors, "output": OUT.safetensors,
                   "lora": null | {"r": 4, "alpha": 8.0, "rslora": false, "modules": [...]}}, ...]
      IN.safetensors holds "tokens" and "targets" ([B, T], float32 holding integers; a target < 0
      is masked) and, with "lora", "<module>.A" [d_in, r] and "<module>.B" [r, d_out] for each of
      our module names (h.0.attn.c_attn, model.layers.0.self_attn.q_proj). The model runs in
      float32 with eager attention; with "lora" a PeftModel gets exactly those adapters
      (lora_A.weight = A^T, lora_B.weight = B^T). With "float64": true the model and adapters
      run in float64 (the exact values our float32 computation is compared with). OUT.safetensors
      gets "logits" [B, T, V], "loss"
      (mean cross-entropy over the unmasked targets, summed in float64, as a 1-element tensor), and with
      "lora" the gradient of that loss for each adapter in our orientation ("<module>.dA",
      "<module>.dB").
  hf_reference.py peft_make JOBS.json
      JOBS.json: [{"model": DIR, "out": ADAPTER_DIR, "seed": 1, "std": 0.05,
                   "lora": {LoraConfig keyword arguments: r, lora_alpha, target_modules,
                            rank_pattern, alpha_pattern, use_rslora, ...},
                   "dtype": "float32" | "bfloat16" | "float16"}, ...]
      Creates an adapter with PEFT itself (get_peft_model), sets every lora_A and lora_B weight to
      std * N(0, 1) (so B is not zero), casts them to dtype, and saves it with save_pretrained.
  hf_reference.py peft_eval JOBS.json
      JOBS.json: [{"model": DIR, "adapter": ADAPTER_DIR | null, "inputs": IN.safetensors,
                   "output": OUT.safetensors, "seq_len": T, "float64": true}, ...]
      Loads the model (and the adapter with PeftModel.from_pretrained), in float64 when asked.
      IN.safetensors holds "tokens" [B, T'] (float32 holding integers) and "stream" [N] (a token
      stream). OUT.safetensors gets "logits" [B, T', V] of "tokens", and "window_loss" and
      "window_tokens": the mean cross-entropy (summed in float64) over every next-token target of
      the stream, in consecutive windows of seq_len from token 0, the last one shorter.
Exit 0 on success; a Python exception otherwise.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file


FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}


def make(cases):
    import transformers

    for case in cases:
        config_name, model_name = FAMILIES[case["family"]]
        config = getattr(transformers, config_name)(**case["config"])
        torch.manual_seed(case["seed"])
        model = getattr(transformers, model_name)(config)
        std = case.get("std", 0.2)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1 and ("norm" in name or "ln_" in name):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))  # norm weights (and LayerNorm biases)
                elif name.endswith("bias"):
                    p.copy_(0.2 * torch.randn_like(p))
                else:
                    p.copy_(std * torch.randn_like(p))
        if case.get("torch_dtype"):
            model = model.to(getattr(torch, case["torch_dtype"]))
        kwargs = {"max_shard_size": case["max_shard_size"]} if case.get("max_shard_size") else {}
        model.save_pretrained(case["dir"], safe_serialization=True, **kwargs)


def peft_key_to_ours(name):
    # base_model.model.transformer.h.0.attn.c_attn -> h.0.attn.c_attn
    # base_model.model.model.layers.0.self_attn.q_proj -> model.layers.0.self_attn.q_proj
    for prefix in ("base_model.model.", "transformer."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def run(jobs):
    from transformers import AutoModelForCausalLM

    for job in jobs:
        dtype = torch.float64 if job.get("float64") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            job["model"], torch_dtype=dtype, attn_implementation="eager")
        model.eval()
        inputs = load_file(job["inputs"])
        tokens = inputs["tokens"].round().long()
        targets = inputs["targets"].round().long()
        lora = job.get("lora")
        adapters = {}
        if lora:
            from peft import LoraConfig, get_peft_model

            suffixes = sorted({".".join(m.split(".")[-2:]) for m in lora["modules"]})
            config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], use_rslora=lora["rslora"],
                                target_modules=suffixes, lora_dropout=0.0, bias="none",
                                fan_in_fan_out=model.config.model_type == "gpt2",
                                init_lora_weights=False)
            model = get_peft_model(model, config)
            with torch.no_grad():
                for name, module in model.named_modules():
                    if not hasattr(module, "lora_A") or "default" not in module.lora_A:
                        continue
                    ours = peft_key_to_ours(name)
                    if ours not in lora["modules"]:
                        raise SystemExit(f"PEFT adapted {name} ({ours}), which the test did not ask for")
                    module.lora_A["default"].weight.copy_(inputs[ours + ".A"].t().to(dtype))
                    module.lora_B["default"].weight.copy_(inputs[ours + ".B"].t().to(dtype))
                    adapters[ours] = module
            missing = set(lora["modules"]) - set(adapters)
            if missing:
                raise SystemExit(f"PEFT did not adapt {sorted(missing)}")
        logits = model(input_ids=tokens).logits
        vocab = logits.shape[-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab).double(), targets.reshape(-1), ignore_index=-1,
            reduction="sum") / (targets >= 0).sum()
        out = {"logits": logits.detach().float().contiguous(),
               "loss": loss.detach().reshape(1).float()}
        if lora:
            loss.backward()
            for ours, module in adapters.items():
                out[ours + ".dA"] = module.lora_A["default"].weight.grad.t().contiguous().float()
                out[ours + ".dB"] = module.lora_B["default"].weight.grad.t().contiguous().float()
        save_file(out, job["output"])


def peft_make(jobs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for job in jobs:
        model = AutoModelForCausalLM.from_pretrained(job["model"], torch_dtype=torch.float32)
        fan_in_fan_out = model.config.model_type == "gpt2"
        config = LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=fan_in_fan_out, **job["lora"])
        model = get_peft_model(model, config)
        torch.manual_seed(job.get("seed", 1))
        dtype = getattr(torch, job.get("dtype", "float32"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    p.copy_(job.get("std", 0.05) * torch.randn_like(p))
                    p.data = p.data.to(dtype)
        # The model card needs Jinja2, which the reference environment does not have.
        model.create_or_update_model_card = lambda *args, **kwargs: None
        model.save_pretrained(job["out"], safe_serialization=True)


def peft_eval(jobs):
    from transformers import AutoModelForCausalLM

    for job in jobs:
        dtype = torch.float64 if job.get("float64") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            job["model"], torch_dtype=torch.float32, attn_implementation="eager")
        if job.get("adapter"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, job["adapter"])
        model = model.to(dtype)
        model.eval()
        inputs = load_file(job["inputs"])
        out = {}
        with torch.no_grad():
            tokens = inputs["tokens"].round().long()
            out["logits"] = model(input_ids=tokens).logits.float().contiguous()
            stream = inputs["stream"].round().long()
            seq_len = job["seq_len"]
            total, count = 0.0, 0
            for start in range(0, stream.numel() - 1, seq_len):
                n = min(seq_len, stream.numel() - 1 - start)
                logits = model(input_ids=stream[start:start + n][None]).logits[0]
                total += torch.nn.functional.cross_entropy(
                    logits.double(), stream[start + 1:start + 1 + n], reduction="sum").item()
                count += n
        out["window_loss"] = torch.tensor([total / count], dtype=torch.float32)
        out["window_tokens"] = torch.tensor([float(count)], dtype=torch.float32)
        save_file(out, job["output"])


def main():
    # One or more "COMMAND FILE" pairs, run in order in one process (importing torch and
    # transformers once).
    args = sys.argv[1:]
    if not args or len(args) % 2:
        raise SystemExit("usage: hf_reference.py COMMAND FILE [COMMAND FILE ...]")
    torch.set_num_threads(1)
    commands = {"make": make, "run": run, "peft_make": peft_make, "peft_eval": peft_eval}
    for command, path in zip(args[0::2], args[1::2]):
        if command not in commands:
            raise SystemExit(f"unknown command {command}")
        with open(path) as f:
            commands[command](json.load(f))


if __name__ == "__main__":
    main()
