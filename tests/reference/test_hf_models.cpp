// Our transformer against the implementations users trust, on models made by those libraries:
// tests/reference/hf_reference.py builds random models with transformers itself (Llama with
// grouped-query attention and an untied head; Llama tied, with Llama-3.1 RoPE scaling and
// attention/MLP biases; Qwen2 with q/k/v biases; Mistral; GPT-2), saves them with save_pretrained,
// and computes logits, the masked loss and (through PEFT) the adapter gradients that we compare
// with ours:
//   - logits and loss of the base model read from the model directory: max |ours - theirs| within
//     1e-4 of the largest logit magnitude, loss within 1e-4 relative;
//   - adapter gradients with every linear adapted, rsLoRA off and on: each module's dA and dB within
//     1e-4 of that tensor's largest magnitude of PEFT's gradient;
//   - `lora train` in full mode from a model directory writes a directory that transformers loads
//     (AutoModelForCausalLM.from_pretrained) with our logits.
// The reference environment is .venv (scripts/setup_python.sh); without it these tests skip, saying
// so.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "core/model/hf_model.h"
#include "core/model/transformer.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "tests/common/temp_dir.h"
#include "trainer/data.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

constexpr int kB = 2, kT = 16, kVocab = 97;

struct HfCase {
  const char* name;
  const char* family;
  const char* config;  // transformers config keyword arguments, as JSON
};

const std::vector<HfCase>& cases() {
  static const std::vector<HfCase> c = {
      {"llama_gqa_untied", "llama",
       R"({"vocab_size": 97, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": false})"},
      {"llama_tied_llama3_rope_biases", "llama",
       R"({"vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "tie_word_embeddings": true, "rope_theta": 500000.0, "attention_bias": true,
           "mlp_bias": true, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 16}})"},
      {"qwen2", "qwen2",
       R"({"vocab_size": 97, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "rope_theta": 1000000.0, "tie_word_embeddings": false})"},
      {"mistral", "mistral",
       R"({"vocab_size": 97, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 1, "max_position_embeddings": 64,
           "sliding_window": 64})"},
      {"gpt2", "gpt2",
       R"({"vocab_size": 97, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64})"},
  };
  return c;
}

std::string python() { return LORA_REF_PYTHON; }

// Empty when the reference environment works, else why not.
std::string reference_unavailable() {
  if (!fs::exists(python())) return python() + " does not exist (run scripts/setup_python.sh)";
  const std::string cmd = python() + " -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return python() + " cannot import torch/transformers/peft";
  return "";
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

int run_reference(const std::string& command, const std::string& json_path) {
  const std::string cmd = python() + " " + LORA_SOURCE_DIR + "/tests/reference/hf_reference.py " +
                          command + " " + json_path;
  return std::system(cmd.c_str());
}

struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch make_batch(uint64_t seed) {
  Batch b;
  for (int i = 0; i < kB * kT; ++i) {
    b.tokens.push_back(static_cast<int32_t>(hash_u64(seed, i, 1) % kVocab));
    b.targets.push_back(static_cast<int32_t>(hash_u64(seed, i, 2) % kVocab));
  }
  // Masked positions: the first three of sequence 0 (a prompt) and the last two of sequence 1.
  for (int t = 0; t < 3; ++t) b.targets[t] = -1;
  for (int t = kT - 2; t < kT; ++t) b.targets[kT + t] = -1;
  return b;
}

std::vector<float> as_floats(const std::vector<int32_t>& v) {
  return std::vector<float>(v.begin(), v.end());
}

double max_abs(const float* p, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(p[i])));
  return m;
}

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

class HfReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = new std::string(reference_unavailable());
    if (!skip_reason_->empty()) return;
    dir_ = new TempDir("lora_hf_reference");
    std::ostringstream js;
    js << "[";
    for (size_t i = 0; i < cases().size(); ++i) {
      const HfCase& c = cases()[i];
      js << (i ? "," : "") << "{\"family\": \"" << c.family << "\", \"dir\": \"" << model_dir(c)
         << "\", \"seed\": " << i + 1 << ", \"config\": " << c.config << "}";
    }
    js << "]";
    write_text(*dir_ / "cases.json", js.str());
    made_ = run_reference("make", *dir_ / "cases.json") == 0;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!skip_reason_->empty()) GTEST_SKIP() << "reference environment unavailable: " << *skip_reason_;
    ASSERT_TRUE(made_) << "hf_reference.py make failed";
  }

  static std::string model_dir(const HfCase& c) { return *dir_ / c.name; }

  static TempDir* dir_;
  static std::string* skip_reason_;
  static bool made_;
};

TempDir* HfReference::dir_ = nullptr;
std::string* HfReference::skip_reason_ = nullptr;
bool HfReference::made_ = false;

std::unique_ptr<TransformerModel> load_model(const std::string& dir, TrainMode mode,
                                             const std::optional<LoraSpec>& lora) {
  const HfModelDir d = read_hf_model_dir(dir);
  auto model = std::make_unique<TransformerModel>(d.spec, mode, lora);
  load_base_weights(d.weight_files, model->base_layout(), model->base_params());
  model->refresh_fingerprint();
  return model;
}

void expect_logits_and_loss_match(const std::string& what, const float* logits, float loss,
                                  const SafetensorsFile& ref) {
  const std::vector<float> want = ref.read_f32("logits");
  ASSERT_EQ(want.size(), static_cast<size_t>(kB) * kT * kVocab) << what;
  const double scale = std::max(1.0, max_abs(want.data(), want.size()));
  const double diff = max_abs_diff(logits, want.data(), want.size());
  EXPECT_LE(diff, 1e-4 * scale) << what << ": logits differ by " << diff << " (largest " << scale
                                << ")";
  std::cout << what << ": logits max difference " << diff / scale << " of the largest, loss "
            << loss << " vs " << ref.read_f32("loss")[0] << std::endl;
  const double want_loss = ref.read_f32("loss")[0];
  EXPECT_NEAR(loss, want_loss, 1e-4 * std::fabs(want_loss)) << what;
  // The weights are large enough that the model is far from uniform: a wrong convention would
  // move the loss by far more than the tolerance.
  EXPECT_GT(std::fabs(want_loss - std::log(double(kVocab))), 0.05) << what << ": loss " << want_loss;
}

TEST_F(HfReference, ModelDirectoriesGiveTheSpecTransformersBuilt) {
  const ModelSpec llama = read_hf_model_dir(model_dir(cases()[0])).spec;
  EXPECT_EQ(llama.arch, "llama");
  EXPECT_EQ(llama.kv_heads(), 2);
  EXPECT_EQ(llama.head_size(), 8);
  EXPECT_EQ(llama.ff(), 40);
  EXPECT_FALSE(llama.tied_embeddings);
  EXPECT_FLOAT_EQ(llama.norm_eps, 1e-5f);
  const ModelSpec tied = read_hf_model_dir(model_dir(cases()[1])).spec;
  EXPECT_TRUE(tied.tied_embeddings);
  EXPECT_TRUE(tied.rope_scaling.llama3);
  EXPECT_TRUE(tied.qkv_bias && tied.o_bias && tied.mlp_bias);
  EXPECT_FLOAT_EQ(tied.rope_theta, 500000.0f);
  const ModelSpec qwen = read_hf_model_dir(model_dir(cases()[2])).spec;
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_FALSE(qwen.o_bias);
  const ModelSpec mistral = read_hf_model_dir(model_dir(cases()[3])).spec;
  EXPECT_EQ(mistral.kv_heads(), 1);
  EXPECT_EQ(mistral.sliding_window, 64);
  const ModelSpec gpt2 = read_hf_model_dir(model_dir(cases()[4])).spec;
  EXPECT_TRUE(gpt2.is_gpt2());
  EXPECT_EQ(gpt2.max_seq_len, 64);
}

TEST_F(HfReference, LogitsAndLossMatchTransformers) {
  const Batch b = make_batch(7);
  std::ostringstream jobs;
  jobs << "[";
  std::vector<std::unique_ptr<TransformerModel>> models;
  std::vector<float> losses;
  for (size_t i = 0; i < cases().size(); ++i) {
    const HfCase& c = cases()[i];
    models.push_back(load_model(model_dir(c), TrainMode::kFull, std::nullopt));
    losses.push_back(models.back()->forward(b.tokens.data(), b.targets.data(), kB, kT));
    const std::string in = *dir_ / (std::string(c.name) + ".base.in.safetensors");
    const std::vector<float> tok = as_floats(b.tokens), tgt = as_floats(b.targets);
    write_safetensors(in, {{"tokens", {kB, kT}, tok.data()}, {"targets", {kB, kT}, tgt.data()}});
    jobs << (i ? "," : "") << "{\"model\": \"" << model_dir(c) << "\", \"inputs\": \"" << in
         << "\", \"output\": \"" << (*dir_ / (std::string(c.name) + ".base.out.safetensors"))
         << "\"}";
  }
  jobs << "]";
  write_text(*dir_ / "base_jobs.json", jobs.str());
  ASSERT_EQ(run_reference("run", *dir_ / "base_jobs.json"), 0);
  for (size_t i = 0; i < cases().size(); ++i) {
    const HfCase& c = cases()[i];
    const SafetensorsFile ref(*dir_ / (std::string(c.name) + ".base.out.safetensors"));
    expect_logits_and_loss_match(c.name, models[i]->logits(), losses[i], ref);
  }
}

TEST_F(HfReference, AdapterGradientsMatchPeft) {
  const Batch b = make_batch(9);
  struct Run {
    std::unique_ptr<TransformerModel> model;
    float loss;
    std::vector<float> logits;  // backward overwrites the model's
    std::string name, out;
  };
  std::vector<Run> runs;
  std::ostringstream jobs;
  jobs << "[";
  for (size_t i = 0; i < cases().size(); ++i) {
    const HfCase& c = cases()[i];
    for (bool rslora : {false, true}) {
      const ModelSpec spec = read_hf_model_dir(model_dir(c)).spec;
      LoraSpec lora;
      lora.rank = 4;
      lora.alpha = 8.0f;
      lora.rslora = rslora;
      lora.targets = family_targets(spec);  // all-linear
      lora.init_b = LoraInitB::kGaussian;   // B != 0, so dA is non-zero too
      Run r;
      r.model = load_model(model_dir(c), TrainMode::kLora, lora);
      r.model->init_lora(100 + i);
      // Adapters of the size training gives them (|s A B| ~ 0.1 of the base weights): large enough
      // to matter, small enough that float32 rounding stays well inside the tolerance.
      for (size_t k = 0; k < r.model->n_lora_params(); ++k) r.model->lora_params()[k] *= 0.5f;
      r.model->zero_grads();
      r.loss = r.model->forward(b.tokens.data(), b.targets.data(), kB, kT);
      r.logits.assign(r.model->logits(), r.model->logits() + static_cast<size_t>(kB) * kT * kVocab);
      r.model->backward();
      r.name = std::string(c.name) + (rslora ? " rslora" : "");
      const std::string stem = *dir_ / (std::string(c.name) + (rslora ? ".rslora" : ".lora"));
      r.out = stem + ".out.safetensors";
      const std::vector<float> tok = as_floats(b.tokens), tgt = as_floats(b.targets);
      std::vector<SafetensorsWriteTensor> in = {{"tokens", {kB, kT}, tok.data()},
                                                {"targets", {kB, kT}, tgt.data()}};
      std::string modules;
      for (const LoraModule& m : r.model->lora_layout()->modules()) {
        in.push_back({m.name + ".A", {m.d_in, m.rank}, r.model->lora_params() + m.a_offset});
        in.push_back({m.name + ".B", {m.rank, m.d_out}, r.model->lora_params() + m.b_offset});
        modules += (modules.empty() ? "\"" : ", \"") + m.name + "\"";
      }
      write_safetensors(stem + ".in.safetensors", in);
      jobs << (runs.empty() ? "" : ",") << "{\"model\": \"" << model_dir(c) << "\", \"inputs\": \""
           << stem << ".in.safetensors\", \"output\": \"" << r.out
           << "\", \"float64\": true, \"lora\": {\"r\": 4, "
           << "\"alpha\": 8.0, \"rslora\": " << (rslora ? "true" : "false") << ", \"modules\": ["
           << modules << "]}}";
      runs.push_back(std::move(r));
    }
  }
  jobs << "]";
  write_text(*dir_ / "lora_jobs.json", jobs.str());
  ASSERT_EQ(run_reference("run", *dir_ / "lora_jobs.json"), 0);
  double worst = 0;
  std::string worst_at;
  for (const Run& r : runs) {
    const SafetensorsFile ref(r.out);
    expect_logits_and_loss_match(r.name, r.logits.data(), r.loss, ref);
    const float* g = r.model->trainable_grads();
    for (const LoraModule& m : r.model->lora_layout()->modules()) {
      for (const char* which : {"dA", "dB"}) {
        const std::vector<float> want = ref.read_f32(m.name + "." + which);
        const bool is_a = which[1] == 'A';
        const float* got = g + (is_a ? m.a_offset : m.b_offset);
        ASSERT_EQ(want.size(), is_a ? m.n_a() : m.n_b()) << r.name << " " << m.name << " " << which;
        const double scale = max_abs(want.data(), want.size());
        EXPECT_GT(scale, 0.0) << r.name << " " << m.name << " " << which << " is zero";
        const double diff = max_abs_diff(got, want.data(), want.size());
        if (scale > 0 && diff / scale > worst) {
          worst = diff / scale;
          worst_at = r.name + " " + m.name + "." + which;
        }
        EXPECT_LE(diff, 1e-4 * scale + 1e-8)
            << r.name << " " << m.name << "." << which << ": max diff " << diff << " of " << scale;
      }
    }
  }
  std::cout << "largest adapter-gradient difference from PEFT (float64): " << worst
            << " of the tensor's largest magnitude, at " << worst_at << std::endl;
}

// `lora train` with train.mode: full from a model directory writes config.json + model.safetensors
// into run.output_dir; transformers loads that directory and computes the logits we compute.
TEST_F(HfReference, FullModeOutputLoadsInTransformers) {
  for (size_t i : {size_t(0), size_t(4)}) {  // Llama (GQA, untied) and GPT-2
    const HfCase& c = cases()[i];
    const std::string run_dir = *dir_ / (std::string(c.name) + "-full");
    std::vector<uint16_t> tokens;
    for (int k = 0; k < 600; ++k) tokens.push_back(static_cast<uint16_t>(hash_u64(3, k) % kVocab));
    write_token_shard(*dir_ / "train.bin", tokens);
    std::ostringstream cfg;
    cfg << "run: {name: full, output_dir: " << run_dir << ", seed: 5}\n"
        << "model: {path: " << model_dir(c) << "}\n"
        << "data: {train: " << (*dir_ / "train.bin") << ", format: tokens, seq_len: 16}\n"
        << "train: {mode: full, steps: 3, micro_batch: 2, lr: 0.01, log_every: 1}\n"
        << "device: {threads: 1}\n";
    write_text(*dir_ / "full.yaml", cfg.str());
    const std::string cmd = std::string(LORA_BINARY) + " train " + (*dir_ / "full.yaml") + " > " +
                            (*dir_ / "full.log") + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    ASSERT_TRUE(fs::exists(run_dir + "/config.json"));
    ASSERT_TRUE(fs::exists(run_dir + "/model.safetensors"));

    auto trained = load_model(run_dir, TrainMode::kFull, std::nullopt);
    auto original = load_model(model_dir(c), TrainMode::kFull, std::nullopt);
    EXPECT_NE(trained->base_fingerprint(), original->base_fingerprint()) << "training changed nothing";
    const Batch b = make_batch(13);
    const float loss = trained->forward(b.tokens.data(), b.targets.data(), kB, kT);
    const std::vector<float> tok = as_floats(b.tokens), tgt = as_floats(b.targets);
    const std::string in = *dir_ / "full.in.safetensors", out = *dir_ / "full.out.safetensors";
    write_safetensors(in, {{"tokens", {kB, kT}, tok.data()}, {"targets", {kB, kT}, tgt.data()}});
    write_text(*dir_ / "full_jobs.json", "[{\"model\": \"" + run_dir + "\", \"inputs\": \"" + in +
                                             "\", \"output\": \"" + out + "\"}]");
    ASSERT_EQ(run_reference("run", *dir_ / "full_jobs.json"), 0);
    expect_logits_and_loss_match(std::string(c.name) + " trained in full mode", trained->logits(),
                                 loss, SafetensorsFile(out));
  }
}

}  // namespace
}  // namespace lora
