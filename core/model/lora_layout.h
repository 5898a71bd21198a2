// Which linears carry adapters, and where each adapter lives in the one contiguous buffer.
//
// Buffer layout (layer-major, so a layer's adapters and their gradients form one contiguous range
// that the gradient reducer can hand off as soon as backward has finished that layer):
//   for layer l = 0 .. n_layer-1:
//     for target in execution order (attn.qkv, attn.proj, mlp.fc, mlp.proj) if adapted:
//       A [d_in, r]   row-major
//       B [r, d_out]  row-major
// Module names are Hugging Face style: h.{l}.attn.c_attn, h.{l}.attn.c_proj, h.{l}.mlp.c_fc,
// h.{l}.mlp.c_proj, so export to PEFT is a rename and a transpose.
// A LoraLayout needs only the model shape: it never touches the base weights, so the benchmark can
// count adapter sizes of large models without allocating them.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/model/shape.h"

namespace lora {

enum class LoraTarget { kAttnQkv = 0, kAttnProj = 1, kMlpFc = 2, kMlpProj = 3 };
inline constexpr int kNumLoraTargets = 4;

enum class LoraInitA { kGaussian, kKaiming, kZeros };
enum class LoraInitB { kZeros, kGaussian };

// Our name ("attn.qkv"), the HF module suffix ("attn.c_attn").
std::string_view lora_target_name(LoraTarget t);
std::string_view lora_target_hf_name(LoraTarget t);
// Accepts our names and HF aliases: attn.qkv|c_attn|attn.c_attn|qkv, attn.proj|attn.c_proj|o_proj,
// mlp.fc|c_fc|mlp.c_fc|fc, mlp.proj|mlp.c_proj. Plain "c_proj" is ambiguous in GPT-2 (attention and
// MLP both have one) and maps to attn.proj, as PEFT's GPT-2 defaults do. nullopt when unknown.
std::optional<LoraTarget> parse_lora_target(std::string_view name);
std::string_view lora_init_a_name(LoraInitA a);
std::string_view lora_init_b_name(LoraInitB b);

struct LoraSpec {
  int rank = 8;
  float alpha = 16.0f;
  float dropout = 0.0f;  // probability, on the LoRA input
  bool rslora = false;   // scaling alpha / sqrt(r) instead of alpha / r
  std::vector<LoraTarget> targets{LoraTarget::kAttnQkv, LoraTarget::kAttnProj};
  LoraInitA init_a = LoraInitA::kGaussian;
  LoraInitB init_b = LoraInitB::kZeros;

  float scaling() const;
  bool has_target(LoraTarget t) const;
};

struct LoraModule {
  int layer = 0;
  LoraTarget target = LoraTarget::kAttnQkv;
  int d_in = 0;
  int d_out = 0;
  int rank = 0;
  size_t a_offset = 0;  // A [d_in, rank] starts here in the adapter buffer
  size_t b_offset = 0;  // B [rank, d_out]
  size_t n_a() const { return static_cast<size_t>(d_in) * rank; }
  size_t n_b() const { return static_cast<size_t>(rank) * d_out; }
  std::string name() const;  // "h.3.attn.c_attn"
};

// (d_in, d_out) of a target linear in a GPT-2 block of width d_model.
std::pair<int, int> lora_target_dims(LoraTarget t, int d_model);

class LoraLayout {
 public:
  // Throws lora::InputError when the spec does not fit the shape (rank <= 0, rank > min(d_in, d_out),
  // no targets, a duplicate target).
  LoraLayout(const ModelShape& shape, const LoraSpec& spec);

  const LoraSpec& spec() const { return spec_; }
  const std::vector<LoraModule>& modules() const { return modules_; }
  size_t n_params() const { return n_params_; }
  // Elements [layer_begin(l), layer_end(l)) of the buffer hold layer l's adapters.
  size_t layer_begin(int layer) const { return layer_offsets_[layer]; }
  size_t layer_end(int layer) const { return layer_offsets_[layer + 1]; }
  // nullptr when (layer, target) is not adapted.
  const LoraModule* find(int layer, LoraTarget target) const;

 private:
  LoraSpec spec_;
  std::vector<LoraModule> modules_;
  std::vector<int> index_;  // [layer * kNumLoraTargets + target] -> module index or -1
  std::vector<size_t> layer_offsets_;
  size_t n_params_ = 0;
};

// Fills the adapter buffer per spec.init: A gaussian (std 1/r) | kaiming-uniform (bound
// 1/sqrt(d_in)) | zeros; B zeros | gaussian (std 1/r). Values are a pure function of
// (seed, module, element), so every rank computes the same adapters.
void init_lora_params(const LoraLayout& layout, float* params, uint64_t seed);

}  // namespace lora
