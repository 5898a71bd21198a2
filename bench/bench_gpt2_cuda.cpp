// Training-step benchmark of the CUDA model (core/model/transformer_cuda.h) on one GPU: tokens/s
// and step time for one shape, warm-up steps excluded, fp32 throughout. A step is what the
// trainer's step does on the device: zero the gradients, forward with targets and the loss
// deferred (no host synchronisation), backward, then the model's optimizer (global gradient norm,
// clipping at 1.0 and AdamW, all on the device); the step ends when the device is done (an event
// after the update). The loss is read back only for the first and last steps. Defaults: GPT-2 124M
// at a 1024-token context, LoRA r 8 on attn.qkv and attn.proj, batch 4 (`--arch llama` gives a
// Llama-family model of the same sizes, SwiGLU width 4 d_model, `--kv-heads` for grouped-query
// attention). Prints one JSON object, the same keys as bench_train where they mean the same.
//
//   bench_gpt2_cuda [--arch gpt2|llama] [--layers 12] [--d-model 768] [--heads 12] [--kv-heads N]
//                   [--vocab 50257] [--seq 1024] [--batch 4] [--rank 8]
//                   [--targets attn.qkv,attn.proj] [--mode lora|full] [--steps 10] [--warmup 3]
#include <cstdio>

#ifdef LORA_WITH_CUDA

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/cuda_runtime.h"
#include "core/model/transformer.h"
#include "core/model/transformer_cuda.h"
#include "core/rng.h"

using namespace lora;

namespace {

// Times the steps on device 0 and prints the JSON line; returns the exit status.
int run(const ModelSpec& shape, const std::optional<LoraSpec>& lspec, const LoraSpec& spec,
        const std::string& mode, const std::string& targets, int seq, int batch, int steps,
        int warmup) {
  const int device = cuda::select_device(0);
  std::vector<double> times;
  double first_loss = 0.0, last_loss = 0.0;
  float grad_norm = 0.0f;
  size_t n = 0, device_bytes = 0;
  {
    // The base and adapters are initialised on the host as the trainer does, then uploaded.
    std::unique_ptr<CudaTransformerModel> model;
    {
      TransformerModel host(shape, lspec ? TrainMode::kLora : TrainMode::kFull, lspec);
      host.init_base_random(1);
      host.init_lora(2);
      model = CudaTransformerModel::from_host(host);
    }
    cudaStream_t stream = model->stream();
    cudaEvent_t done = nullptr;
    LORA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    n = model->n_trainable();
    auto optimizer = model->make_optimizer(ops::AdamWParams{});
    std::vector<int32_t> tokens(static_cast<size_t>(batch) * seq), labels(tokens.size());
    for (int s = 0; s < warmup + steps; ++s) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        tokens[i] = static_cast<int32_t>(hash_u64(3, s, i) % shape.vocab_size);
        labels[i] = static_cast<int32_t>(hash_u64(4, s, i) % shape.vocab_size);
      }
      const auto t0 = std::chrono::steady_clock::now();
      model->zero_grads();
      model->clear_loss_sum();
      model->forward(tokens.data(), labels.data(), batch, seq,
                     ForwardOptions{.training = true, .step = uint64_t(s), .defer_loss = true});
      model->backward();
      optimizer->step(1e-3f, 1.0f);
      LORA_CUDA_CHECK(cudaEventRecord(done, stream));
      LORA_CUDA_CHECK(cudaEventSynchronize(done));
      const auto t1 = std::chrono::steady_clock::now();
      if (s >= warmup) times.push_back(std::chrono::duration<double>(t1 - t0).count());
      const double loss = model->loss_sum() / static_cast<double>(model->n_targets());
      if (s == 0) first_loss = loss;
      last_loss = loss;
    }
    grad_norm = optimizer->last_grad_norm();
    device_bytes = model->device_bytes();
    cudaEventDestroy(done);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  std::printf(
      "{\"impl\": \"lora-cuda\", \"device\": \"%s\", \"arch\": \"%s\", \"mode\": \"%s\", "
      "\"layers\": %d, "
      "\"d_model\": %d, \"heads\": %d, \"vocab\": %d, \"seq\": %d, \"batch\": %d, "
      "\"rank\": %d, \"targets\": \"%s\", \"trainable\": %zu, \"steps\": %d, "
      "\"warmup\": %d, \"step_s_median\": %.5f, \"step_s_min\": %.5f, "
      "\"tokens_per_s\": %.1f, \"device_mib\": %.1f, \"loss_first\": %.5f, "
      "\"loss_last\": %.5f, \"grad_norm_last\": %.5g}\n",
      cuda::device_name(device).c_str(), shape.arch.c_str(), mode.c_str(), shape.n_layer,
      shape.d_model, shape.n_head, shape.vocab_size, seq, batch, spec.rank, targets.c_str(), n,
      steps, warmup, median, times.front(), batch * seq / median, device_bytes / 1048576.0, first_loss,
      last_loss, grad_norm);
  if (!(std::isfinite(first_loss) && std::isfinite(last_loss) && std::isfinite(grad_norm))) {
    std::fprintf(stderr, "bench_gpt2_cuda: loss or gradient norm is not finite\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ModelSpec sizes;  // GPT-2 124M
  sizes.vocab_size = 50257;
  sizes.max_seq_len = 1024;
  sizes.n_layer = 12;
  sizes.n_head = 12;
  sizes.d_model = 768;
  int seq = 1024, batch = 4, steps = 10, warmup = 3;
  std::string arch = "gpt2", mode = "lora", targets;
  LoraSpec spec;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--arch") arch = v;
    else if (k == "--layers") sizes.n_layer = std::atoi(v);
    else if (k == "--d-model") sizes.d_model = std::atoi(v);
    else if (k == "--heads") sizes.n_head = std::atoi(v);
    else if (k == "--kv-heads") sizes.n_kv_head = std::atoi(v);
    else if (k == "--vocab") sizes.vocab_size = std::atoi(v);
    else if (k == "--seq") seq = std::atoi(v);
    else if (k == "--batch") batch = std::atoi(v);
    else if (k == "--rank") spec.rank = std::atoi(v);
    else if (k == "--targets") targets = v;
    else if (k == "--mode") mode = v;
    else if (k == "--steps") steps = std::atoi(v);
    else if (k == "--warmup") warmup = std::atoi(v);
    else {
      std::fprintf(stderr, "bench_gpt2_cuda: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (steps < 1 || warmup < 0 || batch < 1 || seq < 1) {
    std::fprintf(stderr, "bench_gpt2_cuda: steps, batch and seq must be positive\n");
    return 2;
  }
  sizes.max_seq_len = std::max(sizes.max_seq_len, seq);
  if (arch != "gpt2") sizes.d_ff = 4 * sizes.d_model;
  ModelSpec shape;
  try {
    shape = family_spec(arch, sizes);
    validate_spec(shape, "bench_gpt2_cuda");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpt2_cuda: %s\n", e.what());
    return 2;
  }
  if (targets.empty()) targets = shape.is_gpt2() ? "attn.qkv,attn.proj" : "q_proj,v_proj";
  spec.alpha = 2.0f * spec.rank;
  spec.targets.clear();
  std::stringstream ss(targets);
  for (std::string t; std::getline(ss, t, ',');) {
    const auto target = parse_lora_target(t, shape);
    if (!target) {
      std::fprintf(stderr, "bench_gpt2_cuda: unknown LoRA target %s\n", t.c_str());
      return 2;
    }
    spec.targets.push_back(*target);
  }
  std::optional<LoraSpec> lspec;
  if (mode != "full") lspec = spec;

  try {
    return run(shape, lspec, spec, mode, targets, seq, batch, steps, warmup);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpt2_cuda: %s\n", e.what());
    return 1;
  }
}

#else  // !LORA_WITH_CUDA

int main() {
  std::fprintf(stderr, "bench_gpt2_cuda: this build has no CUDA backend (no nvcc at configure)\n");
  return 1;
}

#endif  // LORA_WITH_CUDA
