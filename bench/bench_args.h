// The model shape and LoRA options shared by the CPU step benchmarks (bench_train, roofline):
//   [--arch gpt2|llama|qwen2|mistral] [--layers 4] [--d-model 256] [--heads 4] [--kv-heads N]
//   [--d-ff N] [--vocab 256] [--seq 128] [--batch 8] [--rank 8] [--targets LIST|all-linear]
//   [--mode lora|full] [--threads 1] [--steps 10] [--warmup 2]
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>

#include "core/model/transformer.h"

namespace lora::bench {

struct StepArgs {
  ModelSpec shape;
  LoraSpec lora;
  std::string arch = "gpt2", targets, mode = "lora";
  int seq = 128, batch = 8, threads = 1, steps = 10, warmup = 2;
  bool full() const { return mode == "full"; }
  std::optional<LoraSpec> lora_spec() const {
    return full() ? std::nullopt : std::optional<LoraSpec>(lora);
  }
};

// Parses argv[1..]; prints the problem and returns false on an unknown option or target.
inline bool parse_step_args(int argc, char** argv, const char* prog, StepArgs& out) {
  ModelSpec sizes = gpt2_spec(256, 128, 4, 4, 256);
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s: %s needs a value\n", prog, k.c_str());
      return false;
    }
    const char* v = argv[i + 1];
    if (k == "--layers")
      sizes.n_layer = std::atoi(v);
    else if (k == "--d-model")
      sizes.d_model = std::atoi(v);
    else if (k == "--heads")
      sizes.n_head = std::atoi(v);
    else if (k == "--kv-heads")
      sizes.n_kv_head = std::atoi(v);
    else if (k == "--d-ff")
      sizes.d_ff = std::atoi(v);
    else if (k == "--vocab")
      sizes.vocab_size = std::atoi(v);
    else if (k == "--arch")
      out.arch = v;
    else if (k == "--seq")
      out.seq = std::atoi(v);
    else if (k == "--batch")
      out.batch = std::atoi(v);
    else if (k == "--rank")
      out.lora.rank = std::atoi(v);
    else if (k == "--targets")
      out.targets = v;
    else if (k == "--mode")
      out.mode = v;
    else if (k == "--threads")
      out.threads = std::atoi(v);
    else if (k == "--steps")
      out.steps = std::atoi(v);
    else if (k == "--warmup")
      out.warmup = std::atoi(v);
    else {
      std::fprintf(stderr, "%s: unknown option %s\n", prog, k.c_str());
      return false;
    }
  }
  if (out.mode != "lora" && out.mode != "full") {
    std::fprintf(stderr, "%s: --mode %s: expected lora or full\n", prog, out.mode.c_str());
    return false;
  }
  sizes.max_seq_len = std::max(sizes.max_seq_len, out.seq);
  out.shape = family_spec(out.arch, sizes);
  if (out.targets.empty())
    out.targets = out.shape.is_gpt2() ? "attn.qkv,attn.proj" : "q_proj,v_proj";
  out.lora.alpha = 2.0f * out.lora.rank;
  out.lora.targets.clear();
  std::stringstream ss(out.targets);
  for (std::string t; std::getline(ss, t, ',');) {
    if (t == "all-linear") {
      out.lora.targets = family_targets(out.shape);
      continue;
    }
    const auto target = parse_lora_target(t, out.shape);
    if (!target) {
      std::fprintf(stderr, "%s: unknown target %s for %s\n", prog, t.c_str(), out.arch.c_str());
      return false;
    }
    out.lora.targets.push_back(*target);
  }
  return true;
}

}  // namespace lora::bench
