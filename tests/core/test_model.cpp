// The whole GPT-2 + LoRA model: gradients by finite differences (every adapter in lora mode, every
// parameter tensor in full mode), the initialisation properties of DESIGN.md section 2, the
// per-block gradient hand-off order, and that lora mode allocates no base gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/model/gpt2.h"
#include "core/optimizer.h"
#include "core/rng.h"

namespace lora {
namespace {

const ModelShape kShape{.vocab_size = 29, .max_seq_len = 12, .n_layer = 2, .n_head = 2, .d_model = 16};
constexpr int kB = 2, kT = 8;

struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch make_batch(uint64_t seed) {
  Batch b;
  for (int i = 0; i < kB * kT; ++i) {
    b.tokens.push_back(static_cast<int32_t>(hash_u64(seed, i, 1) % kShape.vocab_size));
    b.targets.push_back(static_cast<int32_t>(hash_u64(seed, i, 2) % kShape.vocab_size));
  }
  return b;
}

LoraSpec all_targets_spec(int rank = 4) {
  LoraSpec s;
  s.rank = rank;
  s.alpha = 8.0f;
  s.targets = {LoraTarget::kAttnQkv, LoraTarget::kAttnProj, LoraTarget::kMlpFc, LoraTarget::kMlpProj};
  return s;
}

void scale_base(Gpt2Model& m, float f) {
  for (size_t i = 0; i < m.n_base_params(); ++i) m.base_params()[i] *= f;
}

// Central differences on `n_probe` elements of [begin, end) of the trainable buffer, compared with
// the analytic gradient of the mean loss. Returns the number of mismatches.
int check_gradients(Gpt2Model& model, const Batch& b, size_t begin, size_t end, int n_probe,
                    const char* what) {
  model.zero_grads();
  model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  model.backward();
  std::vector<float> analytic(model.trainable_grads(), model.trainable_grads() + model.n_trainable());
  float* p = model.trainable_params();
  int bad = 0;
  const size_t n = end - begin;
  for (int k = 0; k < n_probe && k < static_cast<int>(n); ++k) {
    const size_t i = begin + (n_probe >= static_cast<int>(n) ? k : hash_u64(99, k) % n);
    const float saved = p[i];
    const float eps = 1e-2f * std::max(1.0f, std::fabs(saved));
    p[i] = saved + eps;
    const double lp = model.forward(b.tokens.data(), b.targets.data(), kB, kT);
    p[i] = saved - eps;
    const double lm = model.forward(b.tokens.data(), b.targets.data(), kB, kT);
    p[i] = saved;
    const double numeric = (lp - lm) / (2.0 * eps);
    const double err = std::fabs(numeric - analytic[i]);
    if (err > 2e-3 + 3e-2 * std::fabs(numeric)) {
      ++bad;
      ADD_FAILURE() << what << " element " << i << ": analytic " << analytic[i] << " numeric "
                    << numeric;
    }
  }
  return bad;
}

TEST(Gpt2Model, AdapterGradientsMatchFiniteDifferences) {
  for (bool rslora : {false, true}) {
    LoraSpec spec = all_targets_spec();
    spec.rslora = rslora;
    spec.init_b = LoraInitB::kGaussian;  // B != 0 so dA is exercised
    Gpt2Model model(kShape, TrainMode::kLora, spec);
    model.init_base_random(3);
    scale_base(model, 4.0f);
    model.init_lora(5);
    // Moderate adapters keep the loss close to linear over the finite-difference step.
    for (size_t i = 0; i < model.n_lora_params(); ++i) model.lora_params()[i] *= 0.3f;
    const Batch b = make_batch(17);
    for (const LoraModule& m : model.lora_layout()->modules()) {
      EXPECT_EQ(check_gradients(model, b, m.a_offset, m.a_offset + m.n_a(), 6, (m.name() + ".A").c_str()), 0);
      EXPECT_EQ(check_gradients(model, b, m.b_offset, m.b_offset + m.n_b(), 6, (m.name() + ".B").c_str()), 0);
    }
  }
}

TEST(Gpt2Model, FullModeGradientsMatchFiniteDifferencesForEveryTensor) {
  Gpt2Model model(kShape, TrainMode::kFull, std::nullopt);
  model.init_base_random(3);
  scale_base(model, 4.0f);
  // LayerNorm weights 1 and biases 0 are special points; perturb them so every tensor is generic.
  for (size_t i = 0; i < model.n_base_params(); ++i)
    model.base_params()[i] += 0.1f * normal01(21, 0, i);
  const Batch b = make_batch(23);
  for (const TensorInfo& t : model.base_layout().tensors()) {
    EXPECT_EQ(check_gradients(model, b, t.offset, t.offset + t.numel, 4, t.name.c_str()), 0);
  }
}

TEST(Gpt2Model, ZeroBGivesTheBaseLogitsBitForBit) {
  Gpt2Model base(kShape, TrainMode::kFull, std::nullopt);
  base.init_base_random(3);
  Gpt2Model adapted(kShape, TrainMode::kLora, all_targets_spec());
  std::copy(base.base_params(), base.base_params() + base.n_base_params(), adapted.base_params());
  adapted.init_lora(9);  // A gaussian, B zeros
  const Batch b = make_batch(1);
  const float l0 = base.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const float l1 = adapted.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const size_t n = static_cast<size_t>(kB) * kT * kShape.vocab_size;
  EXPECT_EQ(std::memcmp(base.logits(), adapted.logits(), n * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(&l0, &l1, sizeof(float)), 0);
}

TEST(Gpt2Model, FirstStepMovesBOnly) {
  Gpt2Model model(kShape, TrainMode::kLora, all_targets_spec());
  model.init_base_random(3);
  model.init_lora(9);
  const Batch b = make_batch(2);
  model.zero_grads();
  model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  model.backward();
  for (const LoraModule& m : model.lora_layout()->modules()) {
    const float* g = model.trainable_grads();
    double a_sq = 0, b_sq = 0;
    for (size_t i = 0; i < m.n_a(); ++i) a_sq += double(g[m.a_offset + i]) * g[m.a_offset + i];
    for (size_t i = 0; i < m.n_b(); ++i) b_sq += double(g[m.b_offset + i]) * g[m.b_offset + i];
    EXPECT_EQ(a_sq, 0.0) << m.name() << ": dA must be exactly 0 while B = 0";
    EXPECT_GT(b_sq, 0.0) << m.name() << ": dB must be non-zero";
  }
}

TEST(Gpt2Model, ZeroAAndZeroBNeverLearn) {
  LoraSpec spec = all_targets_spec();
  spec.init_a = LoraInitA::kZeros;
  Gpt2Model model(kShape, TrainMode::kLora, spec);
  model.init_base_random(3);
  model.init_lora(9);
  ops::AdamWParams hp;
  hp.weight_decay = 0.01f;
  AdamW opt(model.n_trainable(), hp);
  for (int step = 0; step < 5; ++step) {
    const Batch b = make_batch(100 + step);
    model.zero_grads();
    model.forward(b.tokens.data(), b.targets.data(), kB, kT);
    model.backward();
    for (size_t i = 0; i < model.n_trainable(); ++i) ASSERT_EQ(model.trainable_grads()[i], 0.0f);
    opt.update(model.trainable_params(), model.trainable_grads(), 1e-2f);
  }
  for (size_t i = 0; i < model.n_trainable(); ++i) ASSERT_EQ(model.trainable_params()[i], 0.0f);
}

TEST(Gpt2Model, GaussianAAndGaussianBChangeTheInitialOutput) {
  Gpt2Model base(kShape, TrainMode::kFull, std::nullopt);
  base.init_base_random(3);
  LoraSpec spec = all_targets_spec();
  spec.init_b = LoraInitB::kGaussian;
  Gpt2Model adapted(kShape, TrainMode::kLora, spec);
  std::copy(base.base_params(), base.base_params() + base.n_base_params(), adapted.base_params());
  adapted.init_lora(9);
  const Batch b = make_batch(1);
  base.forward(b.tokens.data(), b.targets.data(), kB, kT);
  adapted.forward(b.tokens.data(), b.targets.data(), kB, kT);
  double max_diff = 0;
  for (size_t i = 0; i < static_cast<size_t>(kB) * kT * kShape.vocab_size; ++i)
    max_diff = std::max(max_diff, double(std::fabs(base.logits()[i] - adapted.logits()[i])));
  EXPECT_GT(max_diff, 1e-3);
}

TEST(Gpt2Model, LoraModeAllocatesOnlyAdapterGradients) {
  Gpt2Model model(kShape, TrainMode::kLora, all_targets_spec());
  EXPECT_EQ(model.grad_bytes(), model.n_lora_params() * sizeof(float));
  EXPECT_EQ(model.n_trainable(), model.n_lora_params());
  Gpt2Model full(kShape, TrainMode::kFull, std::nullopt);
  EXPECT_EQ(full.grad_bytes(), full.n_base_params() * sizeof(float));
}

TEST(Gpt2Model, ReadyRangesAreDescendingContiguousAndCoverTheBuffer) {
  for (TrainMode mode : {TrainMode::kLora, TrainMode::kFull}) {
    std::optional<LoraSpec> spec;
    if (mode == TrainMode::kLora) spec = all_targets_spec();
    Gpt2Model model(kShape, mode, spec);
    model.init_base_random(3);
    model.init_lora(4);
    const Batch b = make_batch(5);
    std::vector<std::pair<size_t, size_t>> ranges;
    model.zero_grads();
    model.forward(b.tokens.data(), b.targets.data(), kB, kT);
    model.backward(1.0f, [&](size_t off, size_t n) { ranges.emplace_back(off, n); });
    ASSERT_FALSE(ranges.empty());
    size_t expected_end = model.n_trainable();
    for (auto [off, n] : ranges) {
      EXPECT_EQ(off + n, expected_end);
      expected_end = off;
    }
    EXPECT_EQ(expected_end, 0u);
  }
}

TEST(Gpt2Model, DropoutIsReproducibleAndDependsOnTheSequenceId) {
  LoraSpec spec = all_targets_spec();
  spec.dropout = 0.3f;
  spec.init_b = LoraInitB::kGaussian;
  Gpt2Model model(kShape, TrainMode::kLora, spec);
  model.init_base_random(3);
  model.init_lora(4);
  const Batch b = make_batch(5);
  uint64_t ids[kB] = {10, 11};
  ForwardOptions fo{.training = true, .dropout_seed = 77, .step = 3, .seq_ids = ids};
  const float l1 = model.forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
  const float l2 = model.forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
  EXPECT_EQ(l1, l2);
  uint64_t other[kB] = {12, 13};
  fo.seq_ids = other;
  const float l3 = model.forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
  EXPECT_NE(l1, l3);
  const float l_eval = model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  EXPECT_NE(l1, l_eval);
  // Gradients with dropout on also match finite differences (the mask is a pure function).
  fo.seq_ids = ids;
  model.zero_grads();
  model.forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
  model.backward();
  std::vector<float> g(model.trainable_grads(), model.trainable_grads() + model.n_trainable());
  float* p = model.trainable_params();
  for (int k = 0; k < 12; ++k) {
    const size_t i = hash_u64(5, k) % model.n_trainable();
    const float saved = p[i];
    const float eps = 1e-2f;
    p[i] = saved + eps;
    const double lp = model.forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
    p[i] = saved - eps;
    const double lm = model.forward(b.tokens.data(), b.targets.data(), kB, kT, fo);
    p[i] = saved;
    const double numeric = (lp - lm) / (2 * eps);
    EXPECT_NEAR(g[i], numeric, 2e-3 + 3e-2 * std::fabs(numeric)) << "element " << i;
  }
}

}  // namespace
}  // namespace lora
