// Training-step benchmark of the CUDA GPT-2 model (core/model/gpt2_cuda.h) on one GPU: tokens/s
// and step time for one shape, warm-up steps excluded, fp32 throughout. A step is what a training
// step does on the device: zero the gradients, forward with targets (its one host synchronisation,
// the loss read), backward, global gradient norm, AdamW; the step ends when the device is done
// (an event after the update). Defaults: GPT-2 124M at a 1024-token context, LoRA r 8 on
// attn.qkv and attn.proj, batch 4. Prints one JSON object, the same keys as bench_train where they
// mean the same.
//
//   bench_gpt2_cuda [--layers 12] [--d-model 768] [--heads 12] [--vocab 50257] [--seq 1024]
//                   [--batch 4] [--rank 8] [--targets attn.qkv,attn.proj] [--mode lora|full]
//                   [--steps 10] [--warmup 3]
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
#include "core/model/gpt2_cuda.h"
#include "core/ops/adamw.h"
#include "core/rng.h"

using namespace lora;

namespace {

// Times the steps on device 0 and prints the JSON line; returns the exit status.
int run(const ModelSpec& shape, TrainMode train_mode, const std::optional<LoraSpec>& lspec,
        const LoraSpec& spec, const std::string& mode, const std::string& targets, int seq,
        int batch, int steps, int warmup) {
  const int device = cuda::select_device(0);
  cudaStream_t stream = nullptr;
  LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t done = nullptr;
  LORA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  std::vector<double> times;
  float first_loss = 0.0f, last_loss = 0.0f;
  double grad_sq = 0.0;
  size_t n = 0, device_bytes = 0;
  {  // the model and buffers go before the stream they use
    // The base and adapters are initialised on the host as the CPU model does, then uploaded.
    Gpt2CudaModel model(shape, train_mode, lspec, stream);
    {
      TransformerModel host(shape, train_mode, lspec);
      host.init_base_random(1);
      model.upload_base(host.base_params());
      if (lspec) {
        host.init_lora(2);
        model.upload_lora(host.lora_params());
      }
    }
    n = model.n_trainable();
    cuda::DeviceBuffer<float> m(n), v(n);
    cuda::DeviceBuffer<double> sum_sq(1);
    m.zero(stream);
    v.zero(stream);
    const ops::AdamWParams hp{};
    std::vector<int32_t> tokens(static_cast<size_t>(batch) * seq), labels(tokens.size());
    for (int s = 0; s < warmup + steps; ++s) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        tokens[i] = static_cast<int32_t>(hash_u64(3, s, i) % shape.vocab_size);
        labels[i] = static_cast<int32_t>(hash_u64(4, s, i) % shape.vocab_size);
      }
      const auto t0 = std::chrono::steady_clock::now();
      model.zero_grads();
      const float loss = model.forward(tokens.data(), labels.data(), batch, seq,
                                       ForwardOptions{.training = true, .step = uint64_t(s)});
      model.backward();
      ops::sum_squares_cuda(sum_sq.data(), model.trainable_grads(), n, stream);
      ops::adamw_update_cuda(model.trainable_params(), model.trainable_grads(), m.data(),
                             v.data(), n, hp, s + 1, stream);
      LORA_CUDA_CHECK(cudaEventRecord(done, stream));
      LORA_CUDA_CHECK(cudaEventSynchronize(done));
      const auto t1 = std::chrono::steady_clock::now();
      if (s >= warmup) times.push_back(std::chrono::duration<double>(t1 - t0).count());
      if (s == 0) first_loss = loss;
      last_loss = loss;
    }
    sum_sq.copy_to_host(&grad_sq, stream);
    device_bytes = model.device_bytes();
  }
  cudaEventDestroy(done);
  cudaStreamDestroy(stream);
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  std::printf(
      "{\"impl\": \"lora-cuda\", \"device\": \"%s\", \"mode\": \"%s\", \"layers\": %d, "
      "\"d_model\": %d, \"heads\": %d, \"vocab\": %d, \"seq\": %d, \"batch\": %d, "
      "\"rank\": %d, \"targets\": \"%s\", \"trainable\": %zu, \"steps\": %d, "
      "\"warmup\": %d, \"step_s_median\": %.5f, \"step_s_min\": %.5f, "
      "\"tokens_per_s\": %.1f, \"device_mib\": %.1f, \"loss_first\": %.5f, "
      "\"loss_last\": %.5f, \"grad_norm_last\": %.5g}\n",
      cuda::device_name(device).c_str(), mode.c_str(), shape.n_layer, shape.d_model,
      shape.n_head, shape.vocab_size, seq, batch, spec.rank, targets.c_str(), n, steps, warmup,
      median, times.front(), batch * seq / median, device_bytes / 1048576.0, first_loss,
      last_loss, std::sqrt(grad_sq));
  if (!(std::isfinite(first_loss) && std::isfinite(last_loss) && std::isfinite(grad_sq))) {
    std::fprintf(stderr, "bench_gpt2_cuda: loss or gradient norm is not finite\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ModelSpec shape = gpt2_spec(50257, 1024, 12, 12, 768);
  int seq = 1024, batch = 4, steps = 10, warmup = 3;
  std::string mode = "lora", targets = "attn.qkv,attn.proj";
  LoraSpec spec;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--layers") shape.n_layer = std::atoi(v);
    else if (k == "--d-model") shape.d_model = std::atoi(v);
    else if (k == "--heads") shape.n_head = std::atoi(v);
    else if (k == "--vocab") shape.vocab_size = std::atoi(v);
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
  shape.max_seq_len = std::max(shape.max_seq_len, seq);
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
  const bool full = mode == "full";
  std::optional<LoraSpec> lspec;
  if (!full) lspec = spec;
  const TrainMode train_mode = full ? TrainMode::kFull : TrainMode::kLora;

  try {
    return run(shape, train_mode, lspec, spec, mode, targets, seq, batch, steps, warmup);
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
