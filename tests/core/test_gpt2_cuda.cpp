// The GPT-2 + LoRA model on the GPU against the CPU reference model (core/model/transformer.h): the same
// base and adapters uploaded to both give the same loss (1e-4 relative), logits (1e-4 abs + rel)
// and trainable gradients (1e-3 relative, with an absolute floor of 1e-4 of the tensor's largest
// gradient for entries that cancel to almost nothing), in lora mode (all four targets, rsLoRA,
// dropout on with the same masks) and in full mode (every parameter tensor). fp32 on both sides;
// only the summation order (cuBLAS, atomics) and the CPU's vectorised exp/tanh differ.
// Also: B = 0 gives the base logits; the gradient hand-off ranges are descending, contiguous, cover
// the buffer, and are final when their event fires (a second stream copies each range after
// waiting on the event, and the copy equals the final gradients); 50 AdamW steps on the device
// track the CPU loss curve; lora mode allocates no base gradients and activations are sized as on
// the CPU. Without a device every test skips with the reason (fails under LORA_REQUIRE_CUDA=1).
#include <gtest/gtest.h>

#include <string>

#include "core/cuda_runtime.h"
#include "tests/common/cuda_device.h"

#ifdef LORA_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/model/transformer.h"
#include "core/model/gpt2_cuda.h"
#include "core/ops/adamw.h"
#include "core/optimizer.h"
#include "core/rng.h"

namespace lora {
namespace {

const ModelSpec kShape = gpt2_spec(29, 12, 2, 2, 16);
constexpr int kB = 2, kT = 8;

struct Batch {
  std::vector<int32_t> tokens, targets;
};

// Random tokens; targets random, or (learnable) a fixed function of the token.
Batch make_batch(uint64_t seed, int n_batch = kB, int n_seq = kT, bool learnable = false) {
  Batch b;
  for (int i = 0; i < n_batch * n_seq; ++i) {
    const auto tok = static_cast<int32_t>(hash_u64(seed, i, 1) % kShape.vocab_size);
    b.tokens.push_back(tok);
    b.targets.push_back(learnable ? (tok * 7 + 3) % kShape.vocab_size
                                  : static_cast<int32_t>(hash_u64(seed, i, 2) % kShape.vocab_size));
  }
  return b;
}

LoraSpec all_targets_spec() {
  LoraSpec s;
  s.rank = 4;
  s.alpha = 8.0f;
  s.targets = {LoraTarget::kAttnQkv, LoraTarget::kAttnProj, LoraTarget::kMlpFc, LoraTarget::kMlpProj};
  return s;
}

// A non-blocking stream, so nothing the model does is ordered by the legacy default stream.
class Stream {
 public:
  Stream() { LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

std::vector<float> download(const float* device, size_t n, cudaStream_t stream) {
  std::vector<float> host(n);
  LORA_CUDA_CHECK(cudaMemcpyAsync(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost,
                                  stream));
  LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

// got[i] ~ want[i] within atol + rtol |want[i]|, for i in [0, n).
::testing::AssertionResult all_close(const float* got, const float* want, size_t n, double rtol,
                                     double atol, const std::string& what) {
  size_t n_bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < n; ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= atol + rtol * std::fabs(want[i]))) {  // NaN fails too
      if (n_bad < 5) first << "\n  [" << i << "] gpu " << got[i] << " cpu " << want[i];
      ++n_bad;
    }
  }
  if (n_bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << n_bad << " of " << n
                                       << " elements differ (rtol " << rtol << ", atol " << atol
                                       << ")" << first.str();
}

double max_abs(const float* x, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(std::fabs(x[i])));
  return m;
}

// Gradient tolerance: 1e-3 relative, with an absolute floor of 1e-4 of the tensor's largest entry
// (on the CPU model, a 5e-6 relative perturbation of every weight uses about 15% of this budget).
::testing::AssertionResult grads_close(const float* got, const float* want, size_t n,
                                       const std::string& what) {
  return all_close(got, want, n, 1e-3, 1e-4 * max_abs(want, n), what);
}

::testing::AssertionResult loss_close(float got, float want) {
  if (std::fabs(static_cast<double>(got) - want) <= 1e-4 * std::fabs(want)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "gpu loss " << got << " cpu loss " << want;
}

std::vector<float> logits_of(const Gpt2CudaModel& m, int n_batch, int n_seq) {
  std::vector<float> out(static_cast<size_t>(n_batch) * n_seq * kShape.vocab_size);
  m.logits_to_host(out.data());
  return out;
}

// A CPU lora-mode model with a random base (times base_scale) and adapters initialised per spec
// (times lora_scale), and a GPU model holding the same values.
void make_lora_pair(const LoraSpec& spec, cudaStream_t stream, std::unique_ptr<TransformerModel>& cpu,
                    std::unique_ptr<Gpt2CudaModel>& gpu, float base_scale = 1.0f,
                    float lora_scale = 0.3f) {
  cpu = std::make_unique<TransformerModel>(kShape, TrainMode::kLora, spec);
  cpu->init_base_random(3);
  for (size_t i = 0; i < cpu->n_base_params(); ++i) cpu->base_params()[i] *= base_scale;
  cpu->init_lora(5);
  for (size_t i = 0; i < cpu->n_lora_params(); ++i) cpu->lora_params()[i] *= lora_scale;
  gpu = std::make_unique<Gpt2CudaModel>(kShape, TrainMode::kLora, spec, stream);
  gpu->upload_base(cpu->base_params());
  gpu->upload_lora(cpu->lora_params());
}

TEST(Gpt2Cuda, LoraModeMatchesTheCpuModel) {
  LORA_CUDA_DEVICE_OR_SKIP();
  Stream stream;
  LoraSpec spec = all_targets_spec();
  spec.rslora = true;
  spec.dropout = 0.2f;
  spec.init_b = LoraInitB::kGaussian;  // B != 0, so dA and the adapters' effect are non-trivial
  std::unique_ptr<TransformerModel> cpu;
  std::unique_ptr<Gpt2CudaModel> gpu;
  make_lora_pair(spec, stream.get(), cpu, gpu);
  const Batch b = make_batch(17);
  const uint64_t seq_ids[kB] = {5, 9};
  const ForwardOptions train{.training = true, .dropout_seed = 77, .step = 3, .seq_ids = seq_ids};

  const size_t n_logits = static_cast<size_t>(kB) * kT * kShape.vocab_size;
  const float gpu_eval = gpu->forward(b.tokens.data(), b.targets.data(), kB, kT);
  const std::vector<float> eval_logits = logits_of(*gpu, kB, kT);
  const float cpu_eval = cpu->forward(b.tokens.data(), b.targets.data(), kB, kT);
  EXPECT_TRUE(loss_close(gpu_eval, cpu_eval));
  EXPECT_TRUE(all_close(eval_logits.data(), cpu->logits(), n_logits, 1e-4, 1e-4, "eval logits"));

  const float cpu_loss = cpu->forward(b.tokens.data(), b.targets.data(), kB, kT, train);
  const float gpu_loss = gpu->forward(b.tokens.data(), b.targets.data(), kB, kT, train);
  EXPECT_TRUE(loss_close(gpu_loss, cpu_loss));
  const std::vector<float> gpu_logits = logits_of(*gpu, kB, kT);
  EXPECT_TRUE(all_close(gpu_logits.data(), cpu->logits(), n_logits, 1e-4, 1e-4, "logits"));
  // Dropout is active on the device (it moves logits by ~0.2 here), so the match above means the
  // masks are the CPU's.
  double dropout_effect = 0.0;
  for (size_t i = 0; i < n_logits; ++i) {
    dropout_effect = std::max(dropout_effect, std::fabs(double(gpu_logits[i]) - eval_logits[i]));
  }
  EXPECT_GT(dropout_effect, 1e-2);

  cpu->zero_grads();
  gpu->zero_grads();
  cpu->backward(2.0f);
  gpu->backward(2.0f);
  const std::vector<float> g = download(gpu->trainable_grads(), gpu->n_trainable(), stream.get());
  ASSERT_EQ(g.size(), cpu->n_trainable());
  const float* want = cpu->trainable_grads();
  for (const LoraModule& m : cpu->lora_layout()->modules()) {
    EXPECT_GT(max_abs(want + m.a_offset, m.n_a()), 0.0) << m.name;
    EXPECT_GT(max_abs(want + m.b_offset, m.n_b()), 0.0) << m.name;
    EXPECT_TRUE(grads_close(g.data() + m.a_offset, want + m.a_offset, m.n_a(), m.name + ".A"));
    EXPECT_TRUE(grads_close(g.data() + m.b_offset, want + m.b_offset, m.n_b(), m.name + ".B"));
  }
}

TEST(Gpt2Cuda, FullModeMatchesTheCpuModelForEveryParameter) {
  LORA_CUDA_DEVICE_OR_SKIP();
  Stream stream;
  TransformerModel cpu(kShape, TrainMode::kFull, std::nullopt);
  cpu.init_base_random(3);
  // LayerNorm weights 1 and biases 0 are special points; perturb all so each tensor is generic.
  for (size_t i = 0; i < cpu.n_base_params(); ++i) {
    cpu.base_params()[i] += 0.05f * normal01(21, 0, i);
  }
  Gpt2CudaModel gpu(kShape, TrainMode::kFull, std::nullopt, stream.get());
  EXPECT_EQ(gpu.n_lora_params(), 0u);
  EXPECT_EQ(gpu.lora_layout(), nullptr);
  ASSERT_EQ(gpu.n_trainable(), cpu.n_base_params());
  gpu.upload_base(cpu.base_params());
  const Batch b = make_batch(23);

  const float cpu_loss = cpu.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const float gpu_loss = gpu.forward(b.tokens.data(), b.targets.data(), kB, kT);
  EXPECT_TRUE(loss_close(gpu_loss, cpu_loss));
  const size_t n_logits = static_cast<size_t>(kB) * kT * kShape.vocab_size;
  const std::vector<float> gpu_logits = logits_of(gpu, kB, kT);
  EXPECT_TRUE(all_close(gpu_logits.data(), cpu.logits(), n_logits, 1e-4, 1e-4, "logits"));

  cpu.zero_grads();
  gpu.zero_grads();
  cpu.backward(0.5f);
  gpu.backward(0.5f);
  const std::vector<float> g = download(gpu.trainable_grads(), gpu.n_trainable(), stream.get());
  const float* want = cpu.trainable_grads();
  for (const TensorInfo& t : cpu.base_layout().tensors()) {
    EXPECT_GT(max_abs(want + t.offset, t.numel), 0.0) << t.name;
    EXPECT_TRUE(grads_close(g.data() + t.offset, want + t.offset, t.numel, t.name));
  }
}

TEST(Gpt2Cuda, ZeroBGivesTheBaseLogits) {
  LORA_CUDA_DEVICE_OR_SKIP();
  Stream stream;
  Gpt2CudaModel base(kShape, TrainMode::kFull, std::nullopt, stream.get());
  Gpt2CudaModel adapted(kShape, TrainMode::kLora, all_targets_spec(), stream.get());
  std::vector<float> weights(base.n_base_params());
  init_base_params(base.base_layout(), weights.data(), 3);
  base.upload_base(weights.data());
  adapted.upload_base(weights.data());
  std::vector<float> adapters(adapted.n_lora_params());
  init_lora_params(*adapted.lora_layout(), adapters.data(), 9);  // A gaussian, B zeros
  ASSERT_GT(max_abs(adapters.data(), adapters.size()), 0.0);
  adapted.upload_lora(adapters.data());
  const Batch b = make_batch(1);
  const size_t n_logits = static_cast<size_t>(kB) * kT * kShape.vocab_size;

  const float l0 = base.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const std::vector<float> base_logits = logits_of(base, kB, kT);
  const float l1 = adapted.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const std::vector<float> adapted_logits = logits_of(adapted, kB, kT);
  EXPECT_TRUE(all_close(adapted_logits.data(), base_logits.data(), n_logits, 1e-6, 1e-6, "logits"));
  EXPECT_NEAR(l1, l0, 1e-6 * std::fabs(l0));

  // The same base on the CPU gives the same logits (cuBLAS against OpenBLAS).
  TransformerModel cpu(kShape, TrainMode::kFull, std::nullopt);
  std::copy(weights.begin(), weights.end(), cpu.base_params());
  cpu.forward(b.tokens.data(), b.targets.data(), kB, kT);
  EXPECT_TRUE(all_close(base_logits.data(), cpu.logits(), n_logits, 1e-4, 1e-4, "cpu logits"));

  // And B != 0 does change them, so the equality above is due to B = 0.
  LoraSpec gaussian_b = all_targets_spec();
  gaussian_b.init_b = LoraInitB::kGaussian;
  Gpt2CudaModel perturbed(kShape, TrainMode::kLora, gaussian_b, stream.get());
  perturbed.upload_base(weights.data());
  init_lora_params(*perturbed.lora_layout(), adapters.data(), 9);
  perturbed.upload_lora(adapters.data());
  perturbed.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const std::vector<float> perturbed_logits = logits_of(perturbed, kB, kT);
  double max_diff = 0.0;
  for (size_t i = 0; i < n_logits; ++i) {
    max_diff = std::max(max_diff, std::fabs(double(perturbed_logits[i]) - base_logits[i]));
  }
  EXPECT_GT(max_diff, 1e-3);
}

TEST(Gpt2Cuda, ReadyRangesAreDescendingContiguousAndFinalAtTheirEvent) {
  LORA_CUDA_DEVICE_OR_SKIP();
  Stream stream;
  Stream comm;
  for (TrainMode mode : {TrainMode::kLora, TrainMode::kFull}) {
    SCOPED_TRACE(mode == TrainMode::kLora ? "lora" : "full");
    std::optional<LoraSpec> spec;
    if (mode == TrainMode::kLora) {
      spec = all_targets_spec();
      spec->init_b = LoraInitB::kGaussian;
    }
    Gpt2CudaModel model(kShape, mode, spec, stream.get());
    std::vector<float> weights(model.n_base_params());
    init_base_params(model.base_layout(), weights.data(), 3);
    model.upload_base(weights.data());
    if (spec) {
      std::vector<float> adapters(model.n_lora_params());
      init_lora_params(*model.lora_layout(), adapters.data(), 4);
      model.upload_lora(adapters.data());
    }
    const Batch b = make_batch(5);
    const size_t n = model.n_trainable();
    cuda::DeviceBuffer<float> snapshot(n);
    LORA_CUDA_CHECK(cudaMemsetAsync(snapshot.data(), 0xff, snapshot.size_bytes(), comm.get()));
    // A first backward leaves non-zero gradients, so a range copied before its kernels ran would
    // hold the old (half) values.
    model.zero_grads();
    model.forward(b.tokens.data(), b.targets.data(), kB, kT);
    model.backward();
    model.forward(b.tokens.data(), b.targets.data(), kB, kT);
    std::vector<std::pair<size_t, size_t>> ranges;
    std::vector<cudaEvent_t> events;
    float* grads = model.trainable_grads();
    model.backward(1.0f, [&](size_t off, size_t count, cudaEvent_t ready) {
      ranges.emplace_back(off, count);
      events.push_back(ready);
      LORA_CUDA_CHECK(cudaStreamWaitEvent(comm.get(), ready, 0));
      LORA_CUDA_CHECK(cudaMemcpyAsync(snapshot.data() + off, grads + off, count * sizeof(float),
                                      cudaMemcpyDeviceToDevice, comm.get()));
    });
    LORA_CUDA_CHECK(cudaStreamSynchronize(comm.get()));
    const std::vector<float> copied = download(snapshot.data(), n, comm.get());
    const std::vector<float> final_grads = download(grads, n, stream.get());

    const size_t n_expected = kShape.n_layer + (mode == TrainMode::kFull ? 2 : 0);
    ASSERT_EQ(ranges.size(), n_expected);
    size_t expected_end = n;
    for (auto [off, count] : ranges) {
      EXPECT_GT(count, 0u);
      EXPECT_EQ(off + count, expected_end);
      expected_end = off;
    }
    EXPECT_EQ(expected_end, 0u);
    for (size_t i = 0; i < events.size(); ++i) {
      EXPECT_NE(events[i], nullptr);
      for (size_t j = 0; j < i; ++j) EXPECT_NE(events[i], events[j]) << "ranges share an event";
    }
    EXPECT_GT(max_abs(final_grads.data(), n), 0.0);
    EXPECT_EQ(std::memcmp(copied.data(), final_grads.data(), n * sizeof(float)), 0)
        << "a range was copied before its gradients were final";
  }
}

TEST(Gpt2Cuda, FiftyAdamWStepsTrackTheCpuLossCurve) {
  LORA_CUDA_DEVICE_OR_SKIP();
  Stream stream;
  LoraSpec spec = all_targets_spec();
  spec.dropout = 0.1f;
  std::unique_ptr<TransformerModel> cpu;
  std::unique_ptr<Gpt2CudaModel> gpu;
  // A larger base (so the adapters have something to steer) and adapters as initialised (B = 0).
  make_lora_pair(spec, stream.get(), cpu, gpu, /*base_scale=*/4.0f, /*lora_scale=*/1.0f);

  // On the CPU model, a 1e-4 relative perturbation of every gradient moves this loss curve by at
  // most 2e-5 relative; at lr 1e-2 the run is chaotic and 1e-6 already moves it by 2e-2.
  ops::AdamWParams hp;
  hp.weight_decay = 0.01f;
  const float lr = 3e-3f;
  AdamW cpu_opt(cpu->n_trainable(), hp);
  const size_t n = gpu->n_trainable();
  cuda::DeviceBuffer<float> m(n), v(n);
  LORA_CUDA_CHECK(cudaMemsetAsync(m.data(), 0, m.size_bytes(), stream.get()));
  LORA_CUDA_CHECK(cudaMemsetAsync(v.data(), 0, v.size_bytes(), stream.get()));

  std::vector<float> cpu_losses, gpu_losses;
  for (int step = 1; step <= 50; ++step) {
    const Batch b = make_batch(1000 + step, kB, kT, /*learnable=*/true);
    const ForwardOptions fo{
        .training = true, .dropout_seed = 11, .step = static_cast<uint64_t>(step)};
    cpu->zero_grads();
    cpu_losses.push_back(cpu->forward(b.tokens.data(), b.targets.data(), kB, kT, fo));
    cpu->backward();
    cpu_opt.update(cpu->trainable_params(), cpu->trainable_grads(), lr);

    gpu->zero_grads();
    gpu_losses.push_back(gpu->forward(b.tokens.data(), b.targets.data(), kB, kT, fo));
    gpu->backward();
    ops::AdamWParams step_hp = hp;
    step_hp.lr = lr;
    ops::adamw_update_cuda(gpu->trainable_params(), gpu->trainable_grads(), m.data(), v.data(), n,
                           step_hp, step, stream.get());
  }
  for (size_t i = 0; i < cpu_losses.size(); ++i) {
    EXPECT_NEAR(gpu_losses[i], cpu_losses[i], 1e-3 * std::fabs(cpu_losses[i])) << "step " << i + 1;
  }
  // The run learns, so the curves compared above are not flat.
  EXPECT_LT(cpu_losses.back(), 0.9f * cpu_losses.front());
  std::vector<float> cpu_final(cpu->trainable_params(), cpu->trainable_params() + n);
  std::vector<float> gpu_final(n);
  gpu->download_lora(gpu_final.data());
  double diff_sq = 0.0, norm_sq = 0.0;
  for (size_t i = 0; i < n; ++i) {
    diff_sq += static_cast<double>(gpu_final[i] - cpu_final[i]) * (gpu_final[i] - cpu_final[i]);
    norm_sq += static_cast<double>(cpu_final[i]) * cpu_final[i];
  }
  EXPECT_LT(std::sqrt(diff_sq), 1e-3 * std::sqrt(norm_sq)) << "adapters drifted apart";
}

TEST(Gpt2Cuda, MemoryLoraModeHasNoBaseGradientsAndActivationsMatchTheCpu) {
  LORA_CUDA_DEVICE_OR_SKIP();
  Stream stream;
  for (float dropout : {0.0f, 0.1f}) {
    LoraSpec spec = all_targets_spec();
    spec.dropout = dropout;
    Gpt2CudaModel gpu(kShape, TrainMode::kLora, spec, stream.get());
    EXPECT_EQ(gpu.n_trainable(), gpu.n_lora_params());
    EXPECT_EQ(gpu.device_bytes(), (gpu.n_base_params() + 2 * gpu.n_lora_params()) * sizeof(float));
    TransformerModel cpu(kShape, TrainMode::kLora, spec);
    const Batch b = make_batch(3);
    cpu.forward(b.tokens.data(), b.targets.data(), kB, kT);
    gpu.forward(b.tokens.data(), b.targets.data(), kB, kT);
    // Float activations as on the CPU, plus tokens, targets (int32) and dropout row ids (uint64).
    const size_t ids_bytes = static_cast<size_t>(kB) * kT * (4 + 4 + 8);
    EXPECT_EQ(gpu.device_bytes(), (gpu.n_base_params() + 2 * gpu.n_lora_params()) * sizeof(float) +
                                      cpu.workspace_bytes() + ids_bytes);
  }
  Gpt2CudaModel full(kShape, TrainMode::kFull, std::nullopt, stream.get());
  EXPECT_EQ(full.n_trainable(), full.n_base_params());
  EXPECT_EQ(full.device_bytes(), 2 * full.n_base_params() * sizeof(float));
}

TEST(Gpt2Cuda, UploadsRoundTripShapesChangeAndBadInputThrows) {
  LORA_CUDA_DEVICE_OR_SKIP();
  Stream stream;
  LoraSpec spec = all_targets_spec();
  spec.init_b = LoraInitB::kGaussian;
  std::unique_ptr<TransformerModel> cpu;
  std::unique_ptr<Gpt2CudaModel> gpu;
  make_lora_pair(spec, stream.get(), cpu, gpu);
  std::vector<float> base(gpu->n_base_params()), adapters(gpu->n_lora_params());
  gpu->download_base(base.data());
  gpu->download_lora(adapters.data());
  EXPECT_EQ(std::memcmp(base.data(), cpu->base_params(), base.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(adapters.data(), cpu->lora_params(), adapters.size() * sizeof(float)), 0);

  // Activations are reallocated when (n_batch, n_seq) changes; results stay those of the CPU.
  const std::pair<int, int> shapes[] = {{2, 8}, {1, 5}, {3, 12}, {2, 8}};
  for (auto [n_batch, n_seq] : shapes) {
    const Batch b = make_batch(40 + n_seq, n_batch, n_seq);
    const float want = cpu->forward(b.tokens.data(), b.targets.data(), n_batch, n_seq);
    const float got = gpu->forward(b.tokens.data(), b.targets.data(), n_batch, n_seq);
    EXPECT_TRUE(loss_close(got, want)) << n_batch << " x " << n_seq;
  }
  // Without targets: no loss, logits still computed.
  const Batch b = make_batch(7);
  EXPECT_EQ(gpu->forward(b.tokens.data(), nullptr, kB, kT), 0.0f);
  cpu->forward(b.tokens.data(), nullptr, kB, kT);
  const std::vector<float> logits = logits_of(*gpu, kB, kT);
  EXPECT_TRUE(all_close(logits.data(), cpu->logits(), logits.size(), 1e-4, 1e-4, "logits"));
  EXPECT_THROW(gpu->backward(), Error);  // the last forward had no targets

  const std::vector<int32_t> long_seq(kShape.max_seq_len + 1, 0);
  EXPECT_THROW(gpu->forward(long_seq.data(), nullptr, 1, kShape.max_seq_len + 1), Error);
  std::vector<int32_t> bad = b.tokens;
  bad[3] = kShape.vocab_size;
  EXPECT_THROW(gpu->forward(bad.data(), b.targets.data(), kB, kT), Error);
  bad = b.targets;
  bad[5] = -1;
  EXPECT_THROW(gpu->forward(b.tokens.data(), bad.data(), kB, kT), Error);

  Gpt2CudaModel full(kShape, TrainMode::kFull, std::nullopt, stream.get());
  EXPECT_THROW(full.upload_lora(adapters.data()), Error);
  EXPECT_THROW(Gpt2CudaModel(kShape, TrainMode::kLora, std::nullopt, stream.get()), Error);
}

}  // namespace
}  // namespace lora

#else  // !LORA_WITH_CUDA

TEST(Gpt2Cuda, BuiltWithoutCuda) {
  LORA_CUDA_SKIP_OR_FAIL(lora::testing::cuda_not_built_reason());
}

#endif  // LORA_WITH_CUDA
