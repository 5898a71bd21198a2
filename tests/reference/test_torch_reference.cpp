// The whole model against an independent PyTorch implementation (tests/reference/torch_reference.py,
// Debian's python3-torch, float64): same base weights, adapters and batch must give the same loss,
// logits and adapter gradients within 1e-4 relative, for several target sets, rsLoRA on and off.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/model/hf_model.h"
#include "core/model/transformer.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace fs = std::filesystem;

namespace lora {
namespace {

template <typename T>
void write_raw(const fs::path& p, const T* data, size_t n) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(T)));
}

bool python_has_torch() {
  const std::string cmd = std::string(LORA_PYTHON) + " -c 'import torch, numpy' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

struct Case {
  const char* name;
  std::vector<LoraTarget> targets;
  bool rslora;
  int rank;
};

class TorchReference : public ::testing::TestWithParam<Case> {};

TEST_P(TorchReference, LossLogitsAndAdapterGradientsMatch) {
  if (!python_has_torch()) GTEST_SKIP() << "python3 with torch and numpy not found at " << LORA_PYTHON;
  const Case& c = GetParam();
  const ModelSpec shape = gpt2_spec(61, 24, 2, 4, 32);
  LoraSpec spec;
  spec.rank = c.rank;
  spec.alpha = 8.0f;
  spec.rslora = c.rslora;
  spec.targets = c.targets;
  spec.init_b = LoraInitB::kGaussian;  // non-zero B so that dA is non-zero too
  TransformerModel model(shape, TrainMode::kLora, spec);
  model.init_base_random(7);
  // Twice GPT-2's init scale so that every layer contributes visibly to the logits, while the
  // model stays well enough conditioned for float32 to agree with float64 to about 1e-5.
  for (size_t i = 0; i < model.n_base_params(); ++i) model.base_params()[i] *= 2.0f;
  model.init_lora(11);
  for (size_t i = 0; i < model.n_lora_params(); ++i) model.lora_params()[i] *= 0.5f;

  const int B = 3, T = 16;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; ++i) {
    tokens[i] = static_cast<int32_t>(hash_u64(1, i) % shape.vocab_size);
    targets[i] = static_cast<int32_t>(hash_u64(2, i) % shape.vocab_size);
  }
  const float loss = model.forward(tokens.data(), targets.data(), B, T);
  std::vector<float> logits(model.logits(), model.logits() + static_cast<size_t>(B) * T * shape.vocab_size);
  model.zero_grads();
  model.backward();

  const fs::path dir = fs::temp_directory_path() / ("lora_torch_ref_" + std::string(c.name) + "_" +
                                                    std::to_string(::getpid()));
  fs::create_directories(dir);
  save_base_weights((dir / "base.safetensors").string(), model.base_layout(), model.base_params());
  write_raw(dir / "tokens.i32", tokens.data(), tokens.size());
  write_raw(dir / "targets.i32", targets.data(), targets.size());
  write_raw(dir / "lora.f32", model.lora_params(), model.n_lora_params());
  write_raw(dir / "loss.f32", &loss, 1);
  write_raw(dir / "logits.f32", logits.data(), logits.size());
  write_raw(dir / "lora_grads.f32", model.trainable_grads(), model.n_trainable());
  {
    std::ofstream j(dir / "case.json");
    j << "{\"vocab_size\": " << shape.vocab_size << ", \"max_seq_len\": " << shape.max_seq_len
      << ", \"n_layer\": " << shape.n_layer << ", \"n_head\": " << shape.n_head
      << ", \"d_model\": " << shape.d_model << ", \"n_batch\": " << B << ", \"n_seq\": " << T
      << ", \"scaling\": " << spec.scaling() << ", \"modules\": [";
    const auto& mods = model.lora_layout()->modules();
    for (size_t i = 0; i < mods.size(); ++i) {
      const auto& m = mods[i];
      j << (i ? ", " : "") << "{\"name\": \"" << m.name << "\", \"d_in\": " << m.d_in
        << ", \"d_out\": " << m.d_out << ", \"rank\": " << m.rank << ", \"a_offset\": " << m.a_offset
        << ", \"b_offset\": " << m.b_offset << "}";
    }
    j << "]}\n";
  }
  const std::string cmd = std::string(LORA_PYTHON) + " " + LORA_SOURCE_DIR +
                          "/tests/reference/torch_reference.py " + dir.string() + " 1e-4 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[512];
  while (std::fgets(buf, sizeof buf, pipe)) output += buf;
  const int status = ::pclose(pipe);
  std::printf("%s", output.c_str());
  EXPECT_EQ(status, 0) << output;
  EXPECT_NE(output.find("all tensors match"), std::string::npos) << output;
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    TargetSets, TorchReference,
    ::testing::Values(Case{"attn_only", {LoraTarget::kAttnQkv, LoraTarget::kAttnProj}, false, 4},
                      Case{"all_rslora", {LoraTarget::kAttnQkv, LoraTarget::kAttnProj,
                                          LoraTarget::kMlpFc, LoraTarget::kMlpProj}, true, 8},
                      Case{"mlp_only", {LoraTarget::kMlpFc, LoraTarget::kMlpProj}, false, 2},
                      Case{"all_plain", {LoraTarget::kAttnQkv, LoraTarget::kAttnProj,
                                         LoraTarget::kMlpFc, LoraTarget::kMlpProj}, false, 4}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace lora
