// The transformer + LoRA model on the GPU (core/model/transformer_cuda.h) against the CPU reference
// model (core/model/transformer.h), for every family variant: GPT-2; Llama with grouped-query
// attention and an untied head; Llama with an explicit head_dim (n_head * head_dim != d_model);
// Llama tied, with llama3 RoPE scaling and attention/MLP biases; Qwen2 with q/k/v biases. The same
// base and adapters on both give, in fp32 (cuBLAS in pedantic math, no TF32):
//   - the same loss (1e-4 relative) and logits (1e-4 absolute + relative), with and without
//     masked targets, in eval and in training with LoRA dropout (the same masks);
//   - the same adapter gradients (lora mode, every target of the family) and every parameter
//     tensor's gradient (full mode): per tensor within 1e-4 in relative L2 norm, and element by
//     element within 1e-3 relative with an absolute floor of 1e-4 of the tensor's largest entry;
//   - 50 AdamW steps with gradient clipping, each side with its own optimizer (make_optimizer:
//     the device AdamW, norm and clipping against the CPU's), whose losses track within 1e-3;
//   - a run moved across backends through the host copies a checkpoint holds (trainable
//     parameters, moments, step count), GPU to CPU and CPU to GPU, continues as if it had not.
// Also: deferred losses and loss_sum(); the gradient hand-off ranges are descending, contiguous,
// cover the buffer and are final at their event (a second stream copies each range after waiting
// on it); B = 0 gives the base logits; memory accounting; bad input. Without a device every test
// skips with the reason (fails under LORA_REQUIRE_CUDA=1).
#include <gtest/gtest.h>

#include <string>

#include "core/cuda_runtime.h"
#include "tests/common/cuda_device.h"

#ifdef LORA_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/model/transformer.h"
#include "core/model/transformer_cuda.h"
#include "core/rng.h"

namespace lora {
namespace {

constexpr int kB = 2, kT = 8, kVocab = 29;

struct NamedSpec {
  const char* name;
  ModelSpec spec;
};

ModelSpec sized(const char* arch, int n_head, int n_kv_head, int d_model, int d_ff,
                int head_dim = 0) {
  ModelSpec sizes;
  sizes.vocab_size = kVocab;
  sizes.max_seq_len = 12;
  sizes.n_layer = 2;
  sizes.n_head = n_head;
  sizes.n_kv_head = n_kv_head;
  sizes.d_model = d_model;
  sizes.head_dim = head_dim;
  sizes.d_ff = d_ff;
  return family_spec(arch, sizes);
}

std::vector<NamedSpec> specs() {
  std::vector<NamedSpec> out;
  out.push_back({"gpt2", sized("gpt2", 2, 0, 16, 0)});
  out.push_back({"llama_gqa_untied", sized("llama", 4, 2, 16, 24)});
  out.push_back({"llama_gqa_head_dim", sized("llama", 4, 1, 16, 24, 6)});
  ModelSpec tied = sized("llama", 2, 1, 16, 20);
  tied.tied_embeddings = true;
  tied.qkv_bias = tied.o_bias = tied.mlp_bias = true;  // Llama's attention_bias / mlp_bias
  tied.rope_scaling.llama3 = true;
  tied.rope_scaling.factor = 4.0f;
  tied.rope_scaling.original_max_position_embeddings = 16;
  tied.rope_theta = 500.0f;
  out.push_back({"llama_tied_biases_llama3_rope", tied});
  out.push_back({"qwen2", sized("qwen2", 4, 2, 16, 24)});
  return out;
}

void PrintTo(const NamedSpec& s, std::ostream* os) {
  *os << s.name << " (" << describe_spec(s.spec) << ")";
}

struct Batch {
  std::vector<int32_t> tokens, targets;
};

// Random tokens; targets random, or (learnable) a fixed function of the token; every
// `mask_every`-th target masked (-1) when mask_every > 0.
Batch make_batch(uint64_t seed, int n_batch = kB, int n_seq = kT, bool learnable = false,
                 int mask_every = 0) {
  Batch b;
  for (int i = 0; i < n_batch * n_seq; ++i) {
    const auto tok = static_cast<int32_t>(hash_u64(seed, i, 1) % kVocab);
    b.tokens.push_back(tok);
    b.targets.push_back(learnable ? (tok * 7 + 3) % kVocab
                                  : static_cast<int32_t>(hash_u64(seed, i, 2) % kVocab));
    if (mask_every > 0 && i % mask_every == 1) b.targets.back() = -1;
  }
  return b;
}

LoraSpec all_targets_spec(const ModelSpec& model) {
  LoraSpec s;
  s.rank = 4;
  s.alpha = 8.0f;
  s.targets = family_targets(model);
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

// ||got - want|| / ||want|| in double.
double relative_l2(const float* got, const float* want, size_t n) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    norm += static_cast<double>(want[i]) * want[i];
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// A gradient tensor: 1e-4 relative in L2 norm, and element-wise 1e-3 relative with an absolute
// floor of 1e-4 of the tensor's largest entry (entries that cancel to almost nothing).
::testing::AssertionResult grads_close(const float* got, const float* want, size_t n,
                                       const std::string& what) {
  const double rel = relative_l2(got, want, n);
  if (!(rel <= 1e-4)) {
    return ::testing::AssertionFailure() << what << ": relative L2 difference " << rel
                                         << " exceeds 1e-4";
  }
  return all_close(got, want, n, 1e-3, 1e-4 * max_abs(want, n), what);
}

::testing::AssertionResult loss_close(double got, double want, double rtol = 1e-4) {
  if (std::fabs(got - want) <= rtol * std::fabs(want)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "gpu loss " << got << " cpu loss " << want;
}

std::vector<float> logits_of(const CudaTransformerModel& m, int n_batch, int n_seq) {
  std::vector<float> out(static_cast<size_t>(n_batch) * n_seq * kVocab);
  m.logits_to_host(out.data());
  return out;
}

// A CPU model with a random base (norm weights and biases perturbed so every tensor is generic)
// and, in lora mode, adapters initialised per spec times lora_scale; and its GPU copy.
std::unique_ptr<TransformerModel> make_cpu(const ModelSpec& spec,
                                           const std::optional<LoraSpec>& lora,
                                           float base_scale = 1.0f, float lora_scale = 0.3f) {
  auto cpu = std::make_unique<TransformerModel>(
      spec, lora ? TrainMode::kLora : TrainMode::kFull, lora);
  cpu->init_base_random(3);
  for (size_t i = 0; i < cpu->n_base_params(); ++i) {
    cpu->base_params()[i] = base_scale * cpu->base_params()[i] + 0.05f * normal01(21, 0, i);
  }
  cpu->refresh_fingerprint();
  cpu->init_lora(5);
  for (size_t i = 0; i < cpu->n_lora_params(); ++i) cpu->lora_params()[i] *= lora_scale;
  return cpu;
}

class CudaTransformer : public ::testing::TestWithParam<NamedSpec> {
 protected:
  void SetUp() override { LORA_CUDA_DEVICE_OR_SKIP(); }
  const ModelSpec& model_spec() const { return GetParam().spec; }
};

INSTANTIATE_TEST_SUITE_P(Families, CudaTransformer, ::testing::ValuesIn(specs()),
                         [](const ::testing::TestParamInfo<NamedSpec>& info) {
                           return std::string(info.param.name);
                         });

TEST_P(CudaTransformer, LoraModeMatchesTheCpuModel) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  LoraSpec lspec = all_targets_spec(spec);
  lspec.rslora = true;
  lspec.dropout = 0.2f;
  lspec.init_b = LoraInitB::kGaussian;  // B != 0, so dA and the adapters' effect are non-trivial
  auto cpu = make_cpu(spec, lspec);
  auto gpu = CudaTransformerModel::from_host(*cpu, stream.get());
  EXPECT_EQ(gpu->base_fingerprint(), cpu->base_fingerprint());
  const size_t n_logits = static_cast<size_t>(kB) * kT * kVocab;
  for (const int mask_every : {0, 3}) {
    SCOPED_TRACE(mask_every ? "masked targets" : "no mask");
    const Batch b = make_batch(17 + mask_every, kB, kT, false, mask_every);
    const uint64_t seq_ids[kB] = {5, 9};
    const ForwardOptions train{.training = true, .dropout_seed = 77, .step = 3, .seq_ids = seq_ids};

    const float gpu_eval = gpu->forward(b.tokens.data(), b.targets.data(), kB, kT);
    const std::vector<float> eval_logits = logits_of(*gpu, kB, kT);
    const float cpu_eval = cpu->forward(b.tokens.data(), b.targets.data(), kB, kT);
    EXPECT_TRUE(loss_close(gpu_eval, cpu_eval));
    EXPECT_EQ(gpu->n_targets(), cpu->n_targets());
    if (mask_every) {
      EXPECT_LT(cpu->n_targets(), kB * kT);
    }
    EXPECT_TRUE(all_close(eval_logits.data(), cpu->logits(), n_logits, 1e-4, 1e-4, "eval logits"));
    // The logits() host view equals the explicit download.
    EXPECT_EQ(std::memcmp(gpu->logits(), eval_logits.data(), n_logits * sizeof(float)), 0);

    const float cpu_loss = cpu->forward(b.tokens.data(), b.targets.data(), kB, kT, train);
    const float gpu_loss = gpu->forward(b.tokens.data(), b.targets.data(), kB, kT, train);
    EXPECT_TRUE(loss_close(gpu_loss, cpu_loss));
    const std::vector<float> gpu_logits = logits_of(*gpu, kB, kT);
    EXPECT_TRUE(all_close(gpu_logits.data(), cpu->logits(), n_logits, 1e-4, 1e-4, "logits"));
    // Per-position losses: 0 where masked, the CPU's elsewhere.
    std::vector<float> gpu_losses(static_cast<size_t>(kB) * kT);
    gpu->losses_to_host(gpu_losses.data());
    EXPECT_TRUE(all_close(gpu_losses.data(), cpu->losses(), gpu_losses.size(), 1e-4, 1e-5,
                          "per-position losses"));
    for (size_t i = 0; i < gpu_losses.size(); ++i) {
      if (b.targets[i] < 0) {
        EXPECT_EQ(gpu_losses[i], 0.0f) << i;
      }
    }
    // Dropout is active on the device (it moves the logits), so the match above means the masks
    // are the CPU's.
    double dropout_effect = 0.0;
    for (size_t i = 0; i < n_logits; ++i) {
      dropout_effect = std::max(dropout_effect, std::fabs(double(gpu_logits[i]) - eval_logits[i]));
    }
    EXPECT_GT(dropout_effect, 1e-3);

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
}

TEST_P(CudaTransformer, FullModeMatchesTheCpuModelForEveryParameter) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  auto cpu = make_cpu(spec, std::nullopt);
  auto gpu = CudaTransformerModel::from_host(*cpu, stream.get());
  EXPECT_EQ(gpu->n_lora_params(), 0u);
  EXPECT_EQ(gpu->lora_layout(), nullptr);
  ASSERT_EQ(gpu->n_trainable(), cpu->n_base_params());
  const Batch b = make_batch(23, kB, kT, false, 4);

  const float cpu_loss = cpu->forward(b.tokens.data(), b.targets.data(), kB, kT);
  const float gpu_loss = gpu->forward(b.tokens.data(), b.targets.data(), kB, kT);
  EXPECT_TRUE(loss_close(gpu_loss, cpu_loss));
  const size_t n_logits = static_cast<size_t>(kB) * kT * kVocab;
  const std::vector<float> gpu_logits = logits_of(*gpu, kB, kT);
  EXPECT_TRUE(all_close(gpu_logits.data(), cpu->logits(), n_logits, 1e-4, 1e-4, "logits"));

  cpu->zero_grads();
  gpu->zero_grads();
  cpu->backward(0.5f);
  gpu->backward(0.5f);
  const std::vector<float> g = download(gpu->trainable_grads(), gpu->n_trainable(), stream.get());
  const float* want = cpu->trainable_grads();
  for (const TensorInfo& t : cpu->base_layout().tensors()) {
    EXPECT_GT(max_abs(want + t.offset, t.numel), 0.0) << t.name;
    EXPECT_TRUE(grads_close(g.data() + t.offset, want + t.offset, t.numel, t.name));
  }
}

TEST_P(CudaTransformer, ZeroBGivesTheBaseLogits) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  LoraSpec lspec = all_targets_spec(spec);  // A gaussian, B zeros
  auto cpu = make_cpu(spec, lspec, 1.0f, 1.0f);
  ASSERT_GT(max_abs(cpu->lora_params(), cpu->n_lora_params()), 0.0);
  auto adapted = CudaTransformerModel::from_host(*cpu, stream.get());
  CudaTransformerModel base(spec, TrainMode::kFull, std::nullopt, stream.get());
  base.upload_base(cpu->base_params());
  EXPECT_EQ(base.base_fingerprint(), cpu->base_fingerprint());
  const Batch b = make_batch(1);
  const size_t n_logits = static_cast<size_t>(kB) * kT * kVocab;
  const float l0 = base.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const std::vector<float> base_logits = logits_of(base, kB, kT);
  const float l1 = adapted->forward(b.tokens.data(), b.targets.data(), kB, kT);
  const std::vector<float> adapted_logits = logits_of(*adapted, kB, kT);
  EXPECT_TRUE(all_close(adapted_logits.data(), base_logits.data(), n_logits, 1e-6, 1e-6, "logits"));
  EXPECT_NEAR(l1, l0, 1e-6 * std::fabs(l0));

  // And B != 0 does change them, so the equality above is due to B = 0.
  std::vector<float> adapters(cpu->lora_params(), cpu->lora_params() + cpu->n_lora_params());
  for (size_t i = 0; i < adapters.size(); ++i) adapters[i] += 0.3f * normal01(8, 1, i);
  adapted->set_trainable(adapters);
  adapted->forward(b.tokens.data(), b.targets.data(), kB, kT);
  const std::vector<float> perturbed = logits_of(*adapted, kB, kT);
  double max_diff = 0.0;
  for (size_t i = 0; i < n_logits; ++i) {
    max_diff = std::max(max_diff, std::fabs(double(perturbed[i]) - base_logits[i]));
  }
  EXPECT_GT(max_diff, 1e-3);
}

TEST_P(CudaTransformer, ReadyRangesAreDescendingContiguousAndFinalAtTheirEvent) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  Stream comm;
  for (TrainMode mode : {TrainMode::kLora, TrainMode::kFull}) {
    SCOPED_TRACE(mode == TrainMode::kLora ? "lora" : "full");
    std::optional<LoraSpec> lspec;
    if (mode == TrainMode::kLora) {
      lspec = all_targets_spec(spec);
      lspec->init_b = LoraInitB::kGaussian;
    }
    auto cpu = make_cpu(spec, lspec);
    auto model = CudaTransformerModel::from_host(*cpu, stream.get());
    const Batch b = make_batch(5);
    const size_t n = model->n_trainable();
    cuda::DeviceBuffer<float> snapshot(n);
    LORA_CUDA_CHECK(cudaMemsetAsync(snapshot.data(), 0xff, snapshot.size_bytes(), comm.get()));
    // A first backward leaves non-zero gradients, so a range copied before its kernels ran would
    // hold the old (half) values.
    model->zero_grads();
    model->forward(b.tokens.data(), b.targets.data(), kB, kT);
    model->backward();
    model->forward(b.tokens.data(), b.targets.data(), kB, kT);
    std::vector<std::pair<size_t, size_t>> ranges;
    std::vector<cudaEvent_t> events;
    float* grads = model->trainable_grads();
    model->backward_with_events(1.0f, [&](size_t off, size_t count, cudaEvent_t ready) {
      ranges.emplace_back(off, count);
      events.push_back(ready);
      LORA_CUDA_CHECK(cudaStreamWaitEvent(comm.get(), ready, 0));
      LORA_CUDA_CHECK(cudaMemcpyAsync(snapshot.data() + off, grads + off, count * sizeof(float),
                                      cudaMemcpyDeviceToDevice, comm.get()));
    });
    LORA_CUDA_CHECK(cudaStreamSynchronize(comm.get()));
    const std::vector<float> copied = download(snapshot.data(), n, comm.get());
    const std::vector<float> final_grads = download(grads, n, stream.get());

    const size_t n_expected = spec.n_layer + (mode == TrainMode::kFull ? 2 : 0);
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

    // The Model interface's backward hands over the same ranges, in the same order.
    std::vector<std::pair<size_t, size_t>> plain;
    model->forward(b.tokens.data(), b.targets.data(), kB, kT);
    model->backward(1.0f, [&](size_t off, size_t count) { plain.emplace_back(off, count); });
    EXPECT_EQ(plain, ranges);
  }
}

// Both sides train with their own optimizer from make_optimizer (the device one: sum of squares,
// clipping and AdamW on the device). max_norm 15 clips some steps and not others (on the CPU
// model the gradient norms of these runs range from about 8 to 50).
TEST_P(CudaTransformer, FiftyStepsWithTheDeviceOptimizerTrackTheCpuLossCurve) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  LoraSpec lspec = all_targets_spec(spec);
  lspec.dropout = 0.1f;
  // A larger base (so the adapters have something to steer) and adapters as initialised (B = 0).
  auto cpu = make_cpu(spec, lspec, 4.0f, 1.0f);
  auto gpu = CudaTransformerModel::from_host(*cpu, stream.get());
  ops::AdamWParams hp;
  hp.weight_decay = 0.01f;
  const float lr = 3e-3f, max_norm = 15.0f;
  auto cpu_opt = cpu->make_optimizer(hp);
  auto gpu_opt = gpu->make_optimizer(hp);

  std::vector<double> cpu_losses, gpu_losses;
  int n_clipped = 0;
  for (int step = 1; step <= 50; ++step) {
    const Batch b = make_batch(1000 + step, kB, kT, /*learnable=*/true, step % 2 ? 5 : 0);
    ForwardOptions fo{.training = true, .dropout_seed = 11, .step = static_cast<uint64_t>(step)};
    cpu->zero_grads();
    cpu->clear_loss_sum();
    cpu->forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
    cpu_losses.push_back(cpu->loss_sum() / static_cast<double>(cpu->n_targets()));
    cpu->backward();
    cpu_opt->step(lr, max_norm);

    fo.defer_loss = true;  // the training loop's path: no wait in forward
    gpu->zero_grads();
    gpu->clear_loss_sum();
    EXPECT_TRUE(std::isnan(gpu->forward(b.tokens.data(), b.targets.data(), kB, kT, fo)));
    gpu->backward();
    gpu_opt->step(lr, max_norm);
    gpu_losses.push_back(gpu->loss_sum() / static_cast<double>(gpu->n_targets()));
    const float cpu_norm = cpu_opt->last_grad_norm(), gpu_norm = gpu_opt->last_grad_norm();
    EXPECT_NEAR(gpu_norm, cpu_norm, 1e-3 * cpu_norm) << "step " << step;
    n_clipped += cpu_norm > max_norm ? 1 : 0;
  }
  EXPECT_EQ(gpu_opt->steps(), 50);
  for (size_t i = 0; i < cpu_losses.size(); ++i) {
    EXPECT_TRUE(loss_close(gpu_losses[i], cpu_losses[i], 1e-3)) << "step " << i + 1;
  }
  // The run learns (mean of the last 5 steps against the first 5: 0.70 to 0.87 on the CPU model)
  // and clipping acted on some steps only, so the curves compared above are not trivial.
  double first = 0.0, last = 0.0;
  for (int i = 0; i < 5; ++i) {
    first += cpu_losses[i];
    last += cpu_losses[cpu_losses.size() - 1 - i];
  }
  EXPECT_LT(last, 0.9 * first);
  EXPECT_GT(n_clipped, 0);
  EXPECT_LT(n_clipped, 50);
  const size_t n = gpu->n_trainable();
  std::vector<float> gpu_final(n);
  gpu->get_trainable(gpu_final);
  EXPECT_LT(relative_l2(gpu_final.data(), cpu->trainable_params(), n), 1e-3)
      << "adapters drifted apart";
}

// What a checkpoint holds (trainable parameters, moments, optimizer step) moved from one backend
// to the other through the host copies: 10 steps on the GPU then 10 on the CPU (and the reverse)
// against 20 on one backend.
TEST_P(CudaTransformer, StateMovesBetweenBackendsThroughHostCopies) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  const LoraSpec lspec = all_targets_spec(spec);
  ops::AdamWParams hp;
  const float lr = 3e-3f, max_norm = 1.0f;
  auto train = [&](Model& model, TrainableOptimizer& opt, int from, int to) {
    for (int step = from; step < to; ++step) {
      const Batch b = make_batch(500 + step, kB, kT, true);
      model.zero_grads();
      model.forward(b.tokens.data(), b.targets.data(), kB, kT);
      model.backward();
      opt.step(lr, max_norm);
    }
  };
  auto move = [](const Model& from, const TrainableOptimizer& from_opt, Model& to,
                 TrainableOptimizer& to_opt) {
    const size_t n = from.n_trainable();
    std::vector<float> p(n), m(n), v(n);
    from.get_trainable(p);
    from_opt.get_moments(m, v);
    to.set_trainable(p);
    to_opt.set_moments(m, v);
    to_opt.set_steps(from_opt.steps());
    // The round trip is exact.
    std::vector<float> back(n), mb(n), vb(n);
    to.get_trainable(back);
    to_opt.get_moments(mb, vb);
    EXPECT_EQ(back, p);
    EXPECT_EQ(mb, m);
    EXPECT_EQ(vb, v);
  };
  auto reference = make_cpu(spec, lspec, 4.0f, 1.0f);
  auto ref_opt = reference->make_optimizer(hp);
  train(*reference, *ref_opt, 0, 20);
  std::vector<float> want(reference->trainable_params(),
                          reference->trainable_params() + reference->n_trainable());

  for (const bool gpu_first : {true, false}) {
    SCOPED_TRACE(gpu_first ? "GPU then CPU" : "CPU then GPU");
    auto cpu = make_cpu(spec, lspec, 4.0f, 1.0f);
    auto gpu = CudaTransformerModel::from_host(*cpu, stream.get());
    auto cpu_opt = cpu->make_optimizer(hp);
    auto gpu_opt = gpu->make_optimizer(hp);
    Model& first = gpu_first ? static_cast<Model&>(*gpu) : *cpu;
    Model& second = gpu_first ? static_cast<Model&>(*cpu) : *gpu;
    TrainableOptimizer& first_opt = gpu_first ? *gpu_opt : *cpu_opt;
    TrainableOptimizer& second_opt = gpu_first ? *cpu_opt : *gpu_opt;
    train(first, first_opt, 0, 10);
    move(first, first_opt, second, second_opt);
    EXPECT_EQ(second_opt.steps(), 10);
    train(second, second_opt, 10, 20);
    std::vector<float> got(second.n_trainable());
    second.get_trainable(got);
    EXPECT_LT(relative_l2(got.data(), want.data(), want.size()), 1e-3);
  }
}

TEST_P(CudaTransformer, DeferredLossesAndTheLossSum) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  auto cpu = make_cpu(spec, all_targets_spec(spec));
  auto gpu = CudaTransformerModel::from_host(*cpu, stream.get());
  EXPECT_EQ(gpu->loss_sum(), 0.0);
  double want = 0.0;
  for (int k = 0; k < 3; ++k) {
    const Batch b = make_batch(70 + k, kB, kT, false, k == 1 ? 2 : 0);
    const float mean = cpu->forward(b.tokens.data(), b.targets.data(), kB, kT);
    want += static_cast<double>(mean) * static_cast<double>(cpu->n_targets());
    ForwardOptions fo;
    fo.defer_loss = k != 2;
    const float got = gpu->forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
    if (fo.defer_loss) {
      EXPECT_TRUE(std::isnan(got));
    } else {
      EXPECT_TRUE(loss_close(got, mean));
    }
  }
  EXPECT_TRUE(loss_close(gpu->loss_sum(), want));
  EXPECT_EQ(cpu->loss_sum(), want);  // the CPU's is this exact double sum
  // A forward without targets adds nothing; clearing empties it.
  const Batch b = make_batch(9);
  gpu->forward(b.tokens.data(), nullptr, kB, kT);
  EXPECT_TRUE(loss_close(gpu->loss_sum(), want));
  gpu->clear_loss_sum();
  EXPECT_EQ(gpu->loss_sum(), 0.0);
  // Every target masked: loss 0, no targets, zero gradients.
  std::vector<int32_t> masked(b.targets.size(), -1);
  EXPECT_EQ(gpu->forward(b.tokens.data(), masked.data(), kB, kT), 0.0f);
  EXPECT_EQ(gpu->n_targets(), 0);
  gpu->zero_grads();
  gpu->backward();
  const std::vector<float> g = download(gpu->trainable_grads(), gpu->n_trainable(), stream.get());
  EXPECT_EQ(max_abs(g.data(), g.size()), 0.0);
}

TEST_P(CudaTransformer, MemoryLoraModeHasNoBaseGradientsAndActivationsMatchTheCpu) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  const size_t half = static_cast<size_t>(spec.head_size()) / 2;
  const size_t rope_bytes = spec.positions == PositionKind::kRope
                                ? 2 * static_cast<size_t>(spec.max_seq_len) * half * sizeof(float)
                                : 0;
  const size_t scalars = sizeof(double) + sizeof(float);  // the loss sum and mean
  for (float dropout : {0.0f, 0.1f}) {
    LoraSpec lspec = all_targets_spec(spec);
    lspec.dropout = dropout;
    CudaTransformerModel gpu(spec, TrainMode::kLora, lspec, stream.get());
    EXPECT_EQ(gpu.n_trainable(), gpu.n_lora_params());
    EXPECT_EQ(gpu.grad_bytes(), gpu.n_lora_params() * sizeof(float));
    const size_t params = (gpu.n_base_params() + 2 * gpu.n_lora_params()) * sizeof(float);
    EXPECT_EQ(gpu.device_bytes(), params + rope_bytes + scalars);
    TransformerModel cpu(spec, TrainMode::kLora, lspec);
    const Batch b = make_batch(3);
    cpu.forward(b.tokens.data(), b.targets.data(), kB, kT);
    gpu.forward(b.tokens.data(), b.targets.data(), kB, kT);
    // Float activations as on the CPU, plus tokens, targets (int32) and dropout row ids (uint64).
    const size_t ids_bytes = static_cast<size_t>(kB) * kT * (4 + 4 + 8);
    EXPECT_EQ(gpu.workspace_bytes(), cpu.workspace_bytes() + ids_bytes);
    EXPECT_EQ(gpu.device_bytes(), params + rope_bytes + scalars + gpu.workspace_bytes());
  }
  CudaTransformerModel full(spec, TrainMode::kFull, std::nullopt, stream.get());
  EXPECT_EQ(full.n_trainable(), full.n_base_params());
  EXPECT_EQ(full.device_bytes(), 2 * full.n_base_params() * sizeof(float) + rope_bytes + scalars);
}

TEST_P(CudaTransformer, UploadsRoundTripShapesChangeAndBadInputThrows) {
  const ModelSpec& spec = model_spec();
  Stream stream;
  LoraSpec lspec = all_targets_spec(spec);
  lspec.init_b = LoraInitB::kGaussian;
  auto cpu = make_cpu(spec, lspec);
  auto gpu = CudaTransformerModel::from_host(*cpu, stream.get());
  std::vector<float> base(gpu->n_base_params()), adapters(gpu->n_lora_params());
  gpu->get_base(base);
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

  const std::vector<int32_t> long_seq(spec.max_seq_len + 1, 0);
  EXPECT_THROW(gpu->forward(long_seq.data(), nullptr, 1, spec.max_seq_len + 1), Error);
  std::vector<int32_t> bad = b.tokens;
  bad[3] = kVocab;
  EXPECT_THROW(gpu->forward(bad.data(), b.targets.data(), kB, kT), Error);
  bad = b.tokens;
  bad[2] = -1;
  EXPECT_THROW(gpu->forward(bad.data(), b.targets.data(), kB, kT), Error);
  bad = b.targets;
  bad[5] = kVocab;
  EXPECT_THROW(gpu->forward(b.tokens.data(), bad.data(), kB, kT), Error);

  CudaTransformerModel full(spec, TrainMode::kFull, std::nullopt, stream.get());
  EXPECT_THROW(full.upload_lora(adapters.data()), Error);
  EXPECT_THROW(full.set_trainable(adapters), Error);  // wrong size
  EXPECT_THROW(CudaTransformerModel(spec, TrainMode::kLora, std::nullopt, stream.get()), Error);
}

}  // namespace
}  // namespace lora

#else  // !LORA_WITH_CUDA

TEST(CudaTransformer, BuiltWithoutCuda) {
  LORA_CUDA_SKIP_OR_FAIL(lora::testing::cuda_not_built_reason());
}

#endif  // LORA_WITH_CUDA
