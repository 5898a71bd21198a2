// Training-step benchmark of the CPU backend: tokens/s, step time and peak memory for one model
// shape, warm-up steps excluded. Prints one JSON object (bench/cpu_compare.sh runs it beside the
// PyTorch peer, bench/torch_peer.py, on the same shape, threads and batch).
//
//   bench_train [--layers 4] [--d-model 256] [--heads 4] [--vocab 256] [--seq 128] [--batch 8]
//               [--rank 8] [--targets attn.qkv,attn.proj] [--mode lora|full] [--threads 1]
//               [--steps 10] [--warmup 2]
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/model/transformer.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "trainer/trainer.h"

using namespace lora;

int main(int argc, char** argv) {
  ModelSpec sizes = gpt2_spec(256, 128, 4, 4, 256);
  int seq = 128, batch = 8, threads = 1, steps = 10, warmup = 2;
  std::string mode = "lora", targets = "", arch = "gpt2";
  LoraSpec spec;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--layers") sizes.n_layer = std::atoi(v);
    else if (k == "--d-model") sizes.d_model = std::atoi(v);
    else if (k == "--heads") sizes.n_head = std::atoi(v);
    else if (k == "--kv-heads") sizes.n_kv_head = std::atoi(v);
    else if (k == "--d-ff") sizes.d_ff = std::atoi(v);
    else if (k == "--vocab") sizes.vocab_size = std::atoi(v);
    else if (k == "--arch") arch = v;
    else if (k == "--seq") seq = std::atoi(v);
    else if (k == "--batch") batch = std::atoi(v);
    else if (k == "--rank") spec.rank = std::atoi(v);
    else if (k == "--targets") targets = v;
    else if (k == "--mode") mode = v;
    else if (k == "--threads") threads = std::atoi(v);
    else if (k == "--steps") steps = std::atoi(v);
    else if (k == "--warmup") warmup = std::atoi(v);
    else {
      std::fprintf(stderr, "bench_train: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  sizes.max_seq_len = std::max(sizes.max_seq_len, seq);
  const ModelSpec shape = family_spec(arch, sizes);
  if (targets.empty()) targets = shape.is_gpt2() ? "attn.qkv,attn.proj" : "q_proj,v_proj";
  spec.alpha = 2.0f * spec.rank;
  spec.targets.clear();
  std::stringstream ss(targets);
  for (std::string t; std::getline(ss, t, ',');) {
    if (t == "all-linear") {
      spec.targets = family_targets(shape);
      continue;
    }
    const auto target = parse_lora_target(t, shape);
    if (!target) {
      std::fprintf(stderr, "bench_train: unknown target %s for %s\n", t.c_str(), arch.c_str());
      return 2;
    }
    spec.targets.push_back(*target);
  }
  configure_threads(threads);

  const bool full = mode == "full";
  std::optional<LoraSpec> lspec;
  if (!full) lspec = spec;
  TransformerModel model(shape, full ? TrainMode::kFull : TrainMode::kLora, lspec);
  model.init_base_random(1);
  model.init_lora(2);
  AdamW opt(model.n_trainable(), ops::AdamWParams{});
  std::vector<int32_t> tokens(static_cast<size_t>(batch) * seq), targets_v(tokens.size());
  std::vector<double> times;
  for (int s = 0; s < warmup + steps; ++s) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<int32_t>(hash_u64(3, s, i) % shape.vocab_size);
      targets_v[i] = static_cast<int32_t>(hash_u64(4, s, i) % shape.vocab_size);
    }
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grads();
    model.forward(tokens.data(), targets_v.data(), batch, seq);
    model.backward();
    clip_grad_norm(model.trainable_grads(), model.n_trainable(), 1.0f);
    opt.update(model.trainable_params(), model.trainable_grads(), 1e-4f);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) times.push_back(dt);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf(
      "{\"impl\": \"lora\", \"blas_core\": \"%s\", \"mode\": \"%s\", \"threads\": %d, \"layers\": %d, \"d_model\": %d, "
      "\"vocab\": %d, \"seq\": %d, \"batch\": %d, \"rank\": %d, \"targets\": \"%s\", "
      "\"trainable\": %zu, \"step_s_median\": %.5f, \"step_s_min\": %.5f, \"tokens_per_s\": %.1f, "
      "\"peak_rss_mib\": %.1f}\n",
      openblas_get_corename(), mode.c_str(), threads, shape.n_layer, shape.d_model, shape.vocab_size, seq, batch, spec.rank,
      targets.c_str(), model.n_trainable(), median, times.front(), batch * seq / median,
      ru.ru_maxrss / 1024.0);
  return 0;
}
