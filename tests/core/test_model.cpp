// The whole transformer + LoRA model, for every family variant (GPT-2; Llama with grouped-query
// attention and an untied head; Llama tied, with llama3 RoPE scaling and attention/MLP biases;
// Qwen2 with q/k/v biases): gradients by finite differences (every adapter in lora mode, every
// parameter tensor in full mode), the initialisation properties of DESIGN.md section 2, the
// per-block gradient hand-off order, masked targets, and that lora mode allocates no base
// gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/model/transformer.h"
#include "core/optimizer.h"
#include "core/rng.h"

namespace lora {
namespace {

constexpr int kB = 2, kT = 8, kVocab = 29;

struct NamedSpec {
  const char* name;
  ModelSpec spec;
};

ModelSpec sized(const char* arch, int n_head, int n_kv_head, int d_model, int d_ff) {
  ModelSpec sizes;
  sizes.vocab_size = kVocab;
  sizes.max_seq_len = 12;
  sizes.n_layer = 2;
  sizes.n_head = n_head;
  sizes.n_kv_head = n_kv_head;
  sizes.d_model = d_model;
  sizes.d_ff = d_ff;
  return family_spec(arch, sizes);
}

std::vector<NamedSpec> specs() {
  std::vector<NamedSpec> out;
  out.push_back({"gpt2", sized("gpt2", 2, 0, 16, 0)});
  out.push_back({"llama_gqa_untied", sized("llama", 4, 2, 16, 24)});
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

void PrintTo(const NamedSpec& s, std::ostream* os) { *os << s.name << " (" << describe_spec(s.spec) << ")"; }

class TransformerModelTest : public ::testing::TestWithParam<NamedSpec> {
 protected:
  const ModelSpec& model_spec() const { return GetParam().spec; }
};

using Model = TransformerModel;

struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch make_batch(uint64_t seed) {
  Batch b;
  for (int i = 0; i < kB * kT; ++i) {
    b.tokens.push_back(static_cast<int32_t>(hash_u64(seed, i, 1) % kVocab));
    b.targets.push_back(static_cast<int32_t>(hash_u64(seed, i, 2) % kVocab));
  }
  return b;
}

LoraSpec all_targets_spec(const ModelSpec& model, int rank = 4) {
  LoraSpec s;
  s.rank = rank;
  s.alpha = 8.0f;
  s.targets = family_targets(model);
  return s;
}

void scale_base(Model& m, float f) {
  for (size_t i = 0; i < m.n_base_params(); ++i) m.base_params()[i] *= f;
}

// Central differences on `n_probe` elements of [begin, end) of the trainable buffer, compared with
// the analytic gradient of the mean loss. Returns the number of mismatches.
int check_gradients(Model& model, const Batch& b, size_t begin, size_t end, int n_probe,
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
    // Small enough that the strongly scaled models (base x4) stay near-linear over the step.
    const float eps = 3e-3f * std::max(1.0f, std::fabs(saved));
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

TEST_P(TransformerModelTest, AdapterGradientsMatchFiniteDifferences) {
  for (bool rslora : {false, true}) {
    LoraSpec spec = all_targets_spec(model_spec());
    spec.rslora = rslora;
    spec.init_b = LoraInitB::kGaussian;  // B != 0 so dA is exercised
    Model model(model_spec(), TrainMode::kLora, spec);
    model.init_base_random(3);
    scale_base(model, 4.0f);
    model.init_lora(5);
    // Moderate adapters keep the loss close to linear over the finite-difference step.
    for (size_t i = 0; i < model.n_lora_params(); ++i) model.lora_params()[i] *= 0.3f;
    const Batch b = make_batch(17);
    for (const LoraModule& m : model.lora_layout()->modules()) {
      EXPECT_EQ(check_gradients(model, b, m.a_offset, m.a_offset + m.n_a(), 6, (m.name + ".A").c_str()), 0);
      EXPECT_EQ(check_gradients(model, b, m.b_offset, m.b_offset + m.n_b(), 6, (m.name + ".B").c_str()), 0);
    }
  }
}

TEST_P(TransformerModelTest, FullModeGradientsMatchFiniteDifferencesForEveryTensor) {
  Model model(model_spec(), TrainMode::kFull, std::nullopt);
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

TEST_P(TransformerModelTest, ZeroBGivesTheBaseLogitsBitForBit) {
  Model base(model_spec(), TrainMode::kFull, std::nullopt);
  base.init_base_random(3);
  Model adapted(model_spec(), TrainMode::kLora, all_targets_spec(model_spec()));
  std::copy(base.base_params(), base.base_params() + base.n_base_params(), adapted.base_params());
  adapted.refresh_fingerprint();
  adapted.init_lora(9);  // A gaussian, B zeros
  const Batch b = make_batch(1);
  const float l0 = base.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const float l1 = adapted.forward(b.tokens.data(), b.targets.data(), kB, kT);
  const size_t n = static_cast<size_t>(kB) * kT * kVocab;
  EXPECT_EQ(std::memcmp(base.logits(), adapted.logits(), n * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(&l0, &l1, sizeof(float)), 0);
}

TEST_P(TransformerModelTest, FirstStepMovesBOnly) {
  Model model(model_spec(), TrainMode::kLora, all_targets_spec(model_spec()));
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
    EXPECT_EQ(a_sq, 0.0) << m.name << ": dA must be exactly 0 while B = 0";
    EXPECT_GT(b_sq, 0.0) << m.name << ": dB must be non-zero";
  }
}

TEST_P(TransformerModelTest, ZeroAAndZeroBNeverLearn) {
  LoraSpec spec = all_targets_spec(model_spec());
  spec.init_a = LoraInitA::kZeros;
  Model model(model_spec(), TrainMode::kLora, spec);
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

TEST_P(TransformerModelTest, GaussianAAndGaussianBChangeTheInitialOutput) {
  Model base(model_spec(), TrainMode::kFull, std::nullopt);
  base.init_base_random(3);
  LoraSpec spec = all_targets_spec(model_spec());
  spec.init_b = LoraInitB::kGaussian;
  Model adapted(model_spec(), TrainMode::kLora, spec);
  std::copy(base.base_params(), base.base_params() + base.n_base_params(), adapted.base_params());
  adapted.init_lora(9);
  const Batch b = make_batch(1);
  base.forward(b.tokens.data(), b.targets.data(), kB, kT);
  adapted.forward(b.tokens.data(), b.targets.data(), kB, kT);
  double max_diff = 0;
  for (size_t i = 0; i < static_cast<size_t>(kB) * kT * kVocab; ++i)
    max_diff = std::max(max_diff, double(std::fabs(base.logits()[i] - adapted.logits()[i])));
  EXPECT_GT(max_diff, 1e-3);
}

TEST_P(TransformerModelTest, LoraModeAllocatesOnlyAdapterGradients) {
  Model model(model_spec(), TrainMode::kLora, all_targets_spec(model_spec()));
  EXPECT_EQ(model.grad_bytes(), model.n_lora_params() * sizeof(float));
  EXPECT_EQ(model.n_trainable(), model.n_lora_params());
  Model full(model_spec(), TrainMode::kFull, std::nullopt);
  EXPECT_EQ(full.grad_bytes(), full.n_base_params() * sizeof(float));
}

TEST_P(TransformerModelTest, ReadyRangesAreDescendingContiguousAndCoverTheBuffer) {
  for (TrainMode mode : {TrainMode::kLora, TrainMode::kFull}) {
    std::optional<LoraSpec> spec;
    if (mode == TrainMode::kLora) spec = all_targets_spec(model_spec());
    Model model(model_spec(), mode, spec);
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

TEST_P(TransformerModelTest, DropoutIsReproducibleAndDependsOnTheSequenceId) {
  LoraSpec spec = all_targets_spec(model_spec());
  spec.dropout = 0.3f;
  spec.init_b = LoraInitB::kGaussian;
  Model model(model_spec(), TrainMode::kLora, spec);
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

// A masked target (< 0) gives neither loss nor gradient: the loss is the mean over the unmasked
// positions, and gradients equal those of a batch whose masked positions are simply absent from the
// mean (checked against finite differences of that mean).
TEST_P(TransformerModelTest, MaskedTargetsGiveNeitherLossNorGradient) {
  LoraSpec lspec = all_targets_spec(model_spec());
  lspec.init_b = LoraInitB::kGaussian;
  Model model(model_spec(), TrainMode::kLora, lspec);
  model.init_base_random(3);
  scale_base(model, 4.0f);
  model.init_lora(5);
  for (size_t i = 0; i < model.n_lora_params(); ++i) model.lora_params()[i] *= 0.3f;
  Batch b = make_batch(31);
  // Mask the first half of sequence 0 (a prompt) and the last three positions of sequence 1 (pads).
  for (int t = 0; t < kT / 2; ++t) b.targets[t] = -1;
  for (int t = kT - 3; t < kT; ++t) b.targets[kT + t] = -1;
  const float mean = model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  EXPECT_EQ(model.n_targets(), kB * kT - kT / 2 - 3);
  double sum = 0;
  for (int i = 0; i < kB * kT; ++i) {
    if (b.targets[i] < 0) {
      EXPECT_EQ(model.losses()[i], 0.0f) << "position " << i;
    } else {
      sum += model.losses()[i];
    }
  }
  EXPECT_NEAR(mean, sum / model.n_targets(), 1e-6);
  // The masked targets' values do not matter: any other ids there give bit-identical gradients.
  model.zero_grads();
  model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  model.backward();
  std::vector<float> g1(model.trainable_grads(), model.trainable_grads() + model.n_trainable());
  Batch b2 = b;
  for (int i = 0; i < kB * kT; ++i)
    if (b2.targets[i] < 0) b2.targets[i] = -7;
  model.zero_grads();
  model.forward(b2.tokens.data(), b2.targets.data(), kB, kT);
  model.backward();
  EXPECT_EQ(std::memcmp(g1.data(), model.trainable_grads(), g1.size() * sizeof(float)), 0);
  for (const LoraModule& m : model.lora_layout()->modules()) {
    EXPECT_EQ(check_gradients(model, b, m.a_offset, m.a_offset + m.n_a(), 3, (m.name + ".A").c_str()), 0);
    EXPECT_EQ(check_gradients(model, b, m.b_offset, m.b_offset + m.n_b(), 3, (m.name + ".B").c_str()), 0);
  }
}

// loss_scale scales every gradient, and backward accumulates: two backwards with scales a and b
// give the gradient of (a + b) * loss.
TEST_P(TransformerModelTest, BackwardScalesAndAccumulates) {
  Model model(model_spec(), TrainMode::kLora, all_targets_spec(model_spec()));
  model.init_base_random(3);
  model.init_lora(4);
  const Batch b = make_batch(8);
  model.zero_grads();
  model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  model.backward(1.0f);
  std::vector<float> g1(model.trainable_grads(), model.trainable_grads() + model.n_trainable());
  model.zero_grads();
  model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  model.backward(0.25f);
  model.forward(b.tokens.data(), b.targets.data(), kB, kT);
  model.backward(0.5f);
  for (size_t i = 0; i < g1.size(); ++i)
    ASSERT_NEAR(model.trainable_grads()[i], 0.75f * g1[i], 1e-6f + 1e-5f * std::fabs(g1[i]));
}

INSTANTIATE_TEST_SUITE_P(Families, TransformerModelTest, ::testing::ValuesIn(specs()),
                         [](const ::testing::TestParamInfo<NamedSpec>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace lora
