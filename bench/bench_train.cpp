// Training-step benchmark of the CPU backend: tokens/s, step time and peak memory for one model
// shape, warm-up steps excluded. Prints one JSON object (bench/cpu_compare.sh runs it beside the
// PyTorch peer, bench/torch_peer.py, on the same shape, threads and batch).
//
//   bench_train [options of bench/bench_args.h: --arch, --layers, --d-model, ..., --threads]
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_args.h"
#include "core/model/transformer.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "trainer/trainer.h"

using namespace lora;

int main(int argc, char** argv) {
  bench::StepArgs args;
  if (!bench::parse_step_args(argc, argv, "bench_train", args)) return 2;
  const ModelSpec& shape = args.shape;
  const int seq = args.seq, batch = args.batch, steps = args.steps, warmup = args.warmup,
            threads = args.threads;
  const std::string& mode = args.mode;
  const std::string& targets = args.targets;
  const LoraSpec& spec = args.lora;
  configure_threads(threads);

  TransformerModel model(shape, args.full() ? TrainMode::kFull : TrainMode::kLora,
                         args.lora_spec());
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
