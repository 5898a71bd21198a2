// The frozen (or, in full mode, trained) base parameters of a transformer: one contiguous buffer,
// every tensor under its Hugging Face name and in the shape the family's checkpoints store it.
//
// Layout, layer-major so that in full mode a layer's gradients form one contiguous range:
//   embeddings | layer 0 | layer 1 | ... | final norm [| lm_head]
// GPT-2 (Conv1D weights [in, out]; F = d_ff, 4C by default):
//   wte.weight [V, C], wpe.weight [max_seq, C]
//   h.{l}.ln_1.{weight,bias} [C], attn.c_attn.weight [C, 3C], attn.c_attn.bias [3C],
//   attn.c_proj.weight [C, C], attn.c_proj.bias [C], ln_2.{weight,bias} [C],
//   mlp.c_fc.weight [C, F], mlp.c_fc.bias [F], mlp.c_proj.weight [F, C], mlp.c_proj.bias [C]
//   ln_f.{weight,bias} [C]; the LM head is tied to wte.
// Llama family (nn.Linear weights [out, in]; Q = n_head * head_dim, KV = n_kv_head * head_dim):
//   model.embed_tokens.weight [V, C]
//   model.layers.{l}.input_layernorm.weight [C],
//     self_attn.{q_proj [Q, C], k_proj [KV, C], v_proj [KV, C]}.weight, then (Qwen2) their biases,
//     self_attn.o_proj.weight [C, Q], post_attention_layernorm.weight [C],
//     mlp.{gate_proj [F, C], up_proj [F, C]}.weight, mlp.down_proj.weight [C, F]
//   model.norm.weight [C], lm_head.weight [V, C] (absent when tied).
// q, k and v (and gate and up) are consecutive, so their [out, in] weights stacked are one
// [Q + 2KV, C] (and [2F, C]) matrix: each block runs one product for all three (or two).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/model/spec.h"

namespace lora {

struct TensorInfo {
  std::string name;            // Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // row-major, as the family's checkpoints store it
  size_t offset = 0;           // first element in the buffer
  size_t numel = 0;
};

// Pointers into a base buffer (or into a gradient buffer of the same layout). Null where the
// family has no such tensor.
struct LayerParams {
  float* norm1_w;  // (C)
  float* norm1_b;  // (C) LayerNorm only
  float* qkv_w;    // GPT-2 c_attn (C, 3C) | q,k,v_proj stacked (Q + 2KV, C)
  float* qkv_b;    // (Q + 2KV)
  float* o_w;      // GPT-2 (C, C) | o_proj (C, Q)
  float* o_b;      // (C)
  float* norm2_w;  // (C)
  float* norm2_b;  // (C) LayerNorm only
  float* up_w;     // GPT-2 c_fc (C, F) | gate,up_proj stacked (2F, C)
  float* up_b;     // (F) | (2F)
  float* down_w;   // GPT-2 (F, C) | down_proj (C, F)
  float* down_b;   // (C)
};

struct BaseParams {
  float* wte;  // (V, C)
  float* wpe;  // (max_seq, C) learned positions only
  std::vector<LayerParams> layers;
  float* normf_w;  // (C)
  float* normf_b;  // (C) LayerNorm only
  float* lm_head;  // (V, C): wte when tied
};

class BaseLayout {
 public:
  // Throws lora::InputError for an invalid spec (see validate_spec).
  explicit BaseLayout(const ModelSpec& spec);

  const ModelSpec& spec() const { return spec_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t n_params() const { return n_params_; }
  // Elements [layer_begin(l), layer_end(l)) hold block l.
  size_t layer_begin(int layer) const { return layer_offsets_.at(layer); }
  size_t layer_end(int layer) const { return layer_offsets_.at(layer + 1); }
  // Elements [0, embeddings_end()) hold the embeddings; [final_begin(), n_params()) the final
  // norm and the untied LM head.
  size_t embeddings_end() const { return layer_begin(0); }
  size_t final_begin() const { return layer_end(spec_.n_layer - 1); }
  // nullptr when no tensor has that name.
  const TensorInfo* find(const std::string& name) const;

  BaseParams bind(float* buffer) const;

 private:
  ModelSpec spec_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  std::vector<size_t> layer_offsets_;  // n_layer + 1 entries
  size_t n_params_ = 0;
};

// Random init from a seed. GPT-2: N(0, 0.02) weights, residual projections scaled by
// 1/sqrt(2 * n_layer), zero biases, LayerNorm weight 1 and bias 0 (as before this layout
// covered other families: the values for a given GPT-2 shape and seed are unchanged).
// Llama family: N(0, 0.02) weights, zero biases, RMSNorm weights 1 (transformers' init).
void init_base_params(const BaseLayout& layout, float* params, uint64_t seed);

}  // namespace lora
