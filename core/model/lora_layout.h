// Which linears carry adapters, and where each adapter lives in the one contiguous buffer.
//
// Every block has four linears: the attention input (GPT-2's fused c_attn, or q/k/v_proj, whose
// outputs are consecutive column ranges of one [BT, Q + 2KV] product), the attention output
// (c_proj / o_proj), the MLP input (c_fc, or gate/up_proj: columns [0, F) and [F, 2F) of one
// [BT, 2F] product) and the MLP output (mlp.c_proj / down_proj). A LoRA target is one such linear
// or one column range of it; its adapter adds s * (x A) B into exactly that range.
//
// Buffer layout (layer-major, so a layer's adapters and their gradients form one contiguous range
// that the gradient reducer can hand off as soon as backward has finished that layer):
//   for layer l = 0 .. n_layer-1:
//     for target in execution order (GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj;
//                                    Llama family: q, k, v, o, gate, up, down) if adapted:
//       A [d_in, r]   row-major
//       B [r, d_out]  row-major
// Module names are the Hugging Face module paths: h.{l}.attn.c_attn (GPT-2),
// model.layers.{l}.self_attn.q_proj (Llama family), so export to PEFT is a rename and a transpose.
// A LoraLayout needs only the model spec: it never touches the base weights, so the benchmark can
// count adapter sizes of large models without allocating them.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/model/spec.h"

namespace lora {

// The numeric values are stored in checkpoints (and hashed into their checksums): never renumber.
enum class LoraTarget {
  kAttnQkv = 0,   // GPT-2 attn.c_attn
  kAttnProj = 1,  // GPT-2 attn.c_proj, Llama self_attn.o_proj
  kMlpFc = 2,     // GPT-2 mlp.c_fc
  kMlpProj = 3,   // GPT-2 mlp.c_proj, Llama mlp.down_proj
  kQ = 4,         // self_attn.q_proj
  kK = 5,         // self_attn.k_proj
  kV = 6,         // self_attn.v_proj
  kGate = 7,      // mlp.gate_proj
  kUp = 8,        // mlp.up_proj
};
inline constexpr int kNumLoraTargets = 9;

// The four linears of a block, in execution order.
enum class BlockLinear { kAttnIn, kAttnOut, kMlpIn, kMlpOut };

enum class LoraInitA { kGaussian, kKaiming, kZeros };
enum class LoraInitB { kZeros, kGaussian };

// The targets a family has, in execution order.
const std::vector<LoraTarget>& family_targets(const ModelSpec& spec);
// The name configs and checkpoints use: GPT-2 "attn.qkv", "attn.proj", "mlp.fc", "mlp.proj";
// Llama family "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj".
std::string_view lora_target_name(LoraTarget t, const ModelSpec& spec);
// The Hugging Face module path below the block: "attn.c_attn", "self_attn.q_proj", ...
std::string_view lora_target_hf_name(LoraTarget t, const ModelSpec& spec);
// A target name for this family: our names and the Hugging Face ones. GPT-2: attn.qkv|c_attn|
// attn.c_attn|qkv, attn.proj|attn.c_proj|c_proj|o_proj (plain "c_proj" is ambiguous in GPT-2 and
// maps to the attention one, as PEFT's GPT-2 defaults do), mlp.fc|c_fc|mlp.c_fc|fc,
// mlp.proj|mlp.c_proj. Llama family: q_proj|self_attn.q_proj (k, v, o alike), gate_proj|
// mlp.gate_proj (up, down alike). nullopt when the family has no such target.
std::optional<LoraTarget> parse_lora_target(std::string_view name, const ModelSpec& spec);
// Every name parse_lora_target accepts for the family, for messages.
std::string lora_target_names_help(const ModelSpec& spec);
std::string_view lora_init_a_name(LoraInitA a);
std::string_view lora_init_b_name(LoraInitB b);

// The rank and alpha of one module where they differ from the spec's (PEFT's rank_pattern and
// alpha_pattern give adapters whose modules have different ranks).
struct LoraModuleSetting {
  int rank = 0;
  float alpha = 0.0f;
  bool operator==(const LoraModuleSetting&) const = default;
};

struct LoraSpec {
  int rank = 8;
  float alpha = 16.0f;
  float dropout = 0.0f;  // probability, on the LoRA input
  bool rslora = false;   // scaling alpha / sqrt(r) instead of alpha / r
  std::vector<LoraTarget> targets{LoraTarget::kAttnQkv, LoraTarget::kAttnProj};
  LoraInitA init_a = LoraInitA::kGaussian;
  LoraInitB init_b = LoraInitB::kZeros;
  // Per-module rank and alpha by Hugging Face module path ("model.layers.3.self_attn.q_proj");
  // every module not listed has `rank` and `alpha`. Empty for adapters trained here from scratch.
  std::map<std::string, LoraModuleSetting> module_settings;

  float scaling() const;  // of a module with `rank` and `alpha`
  bool has_target(LoraTarget t) const;
  int rank_of(const std::string& module) const;
  float alpha_of(const std::string& module) const;
  float scaling_of(const std::string& module) const;
};

// alpha / r, or alpha / sqrt(r) with rsLoRA.
float lora_scaling(float alpha, int rank, bool rslora);

struct LoraModule {
  int layer = 0;
  LoraTarget target = LoraTarget::kAttnQkv;
  BlockLinear linear = BlockLinear::kAttnIn;
  int d_in = 0;
  int d_out = 0;
  int col_offset = 0;  // first output column of the linear's product this adapter adds into
  int ld_out = 0;      // width of that product (row stride of y and dy)
  int rank = 0;
  float alpha = 0.0f;
  float scaling = 0.0f;
  size_t a_offset = 0;  // A [d_in, rank] starts here in the adapter buffer
  size_t b_offset = 0;  // B [rank, d_out]
  std::string name;     // Hugging Face module path: "h.3.attn.c_attn", "model.layers.3.self_attn.q_proj"
  size_t n_a() const { return static_cast<size_t>(d_in) * rank; }
  size_t n_b() const { return static_cast<size_t>(rank) * d_out; }
  // The LoRA-dropout mask stream of this module (GPT-2 keeps the ids it always had).
  int dropout_stream() const;
};

struct TargetGeometry {
  BlockLinear linear;
  int d_in, d_out, col_offset, ld_out;
};
// Where target t sits in a block of `spec`. Throws lora::InputError when the family has no t.
TargetGeometry lora_target_geometry(LoraTarget t, const ModelSpec& spec);

class LoraLayout {
 public:
  // Throws lora::InputError when the spec does not fit the model (rank <= 0, rank > min(d_in,
  // d_out), no targets, a duplicate target, a target the family does not have, a per-module
  // setting for a module that is not adapted or with a rank or alpha out of range).
  LoraLayout(const ModelSpec& model, const LoraSpec& spec);

  const LoraSpec& spec() const { return spec_; }
  const std::vector<LoraModule>& modules() const { return modules_; }
  size_t n_params() const { return n_params_; }
  int max_rank() const { return max_rank_; }
  // Elements [layer_begin(l), layer_end(l)) of the buffer hold layer l's adapters.
  size_t layer_begin(int layer) const { return layer_offsets_[layer]; }
  size_t layer_end(int layer) const { return layer_offsets_[layer + 1]; }
  // nullptr when (layer, target) is not adapted.
  const LoraModule* find(int layer, LoraTarget target) const;
  // The adapted modules of one linear of a layer, in buffer order (q, k, v for the attention input).
  std::vector<const LoraModule*> modules_of(int layer, BlockLinear linear) const;
  // nullptr when no module has that name.
  const LoraModule* find(const std::string& module_name) const;

 private:
  LoraSpec spec_;
  std::vector<LoraModule> modules_;
  std::vector<int> index_;  // [layer * kNumLoraTargets + target] -> module index or -1
  std::vector<size_t> layer_offsets_;
  size_t n_params_ = 0;
  int max_rank_ = 0;
};

// Fills the adapter buffer per spec.init: A gaussian (std 1/r) | kaiming-uniform (bound
// 1/sqrt(d_in)) | zeros; B zeros | gaussian (std 1/r). Values are a pure function of
// (seed, module, element), so every rank computes the same adapters.
void init_lora_params(const LoraLayout& layout, float* params, uint64_t seed);

}  // namespace lora
