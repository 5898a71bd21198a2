// The frozen (or, in full mode, trained) GPT-2 base parameters: one contiguous buffer.
//
// Layout, layer-major so that in full mode a layer's gradients form one contiguous range:
//   wte [vocab, C] | wpe [max_seq, C] | h.0.* | h.1.* | ... | ln_f.weight [C] | ln_f.bias [C]
// with each block h.l holding, in this order (Hugging Face names, Conv1D orientation [in, out]):
//   ln_1.weight [C], ln_1.bias [C], attn.c_attn.weight [C, 3C], attn.c_attn.bias [3C],
//   attn.c_proj.weight [C, C], attn.c_proj.bias [C], ln_2.weight [C], ln_2.bias [C],
//   mlp.c_fc.weight [C, 4C], mlp.c_fc.bias [4C], mlp.c_proj.weight [4C, C], mlp.c_proj.bias [C]
// The LM head is tied to wte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/model/shape.h"

namespace lora {

struct TensorInfo {
  std::string name;            // Hugging Face GPT-2 name, e.g. "h.0.attn.c_attn.weight"
  std::vector<int64_t> shape;  // row-major
  size_t offset = 0;           // first element in the buffer
  size_t numel = 0;
};

// Pointers into a base buffer (or into a gradient buffer of the same layout).
struct LayerParams {
  float* ln1_w;     // (C)
  float* ln1_b;     // (C)
  float* qkv_w;     // (C, 3C)
  float* qkv_b;     // (3C)
  float* proj_w;    // (C, C)
  float* proj_b;    // (C)
  float* ln2_w;     // (C)
  float* ln2_b;     // (C)
  float* fc_w;      // (C, 4C)
  float* fc_b;      // (4C)
  float* fcproj_w;  // (4C, C)
  float* fcproj_b;  // (C)
};

struct Gpt2Params {
  float* wte;  // (V, C)
  float* wpe;  // (max_seq, C)
  std::vector<LayerParams> layers;
  float* lnf_w;  // (C)
  float* lnf_b;  // (C)
};

class Gpt2Layout {
 public:
  // Throws lora::InputError for an invalid shape (non-positive sizes, n_head not dividing d_model).
  explicit Gpt2Layout(const ModelShape& shape);

  const ModelShape& shape() const { return shape_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t n_params() const { return n_params_; }
  // Elements [layer_begin(l), layer_end(l)) hold block l.
  size_t layer_begin(int layer) const;
  size_t layer_end(int layer) const;
  // Elements [0, embeddings_end()) hold wte and wpe; [final_begin(), n_params()) hold ln_f.
  size_t embeddings_end() const { return layer_begin(0); }
  size_t final_begin() const { return layer_end(shape_.n_layer - 1); }
  // nullptr when no tensor has that name.
  const TensorInfo* find(const std::string& name) const;

  Gpt2Params bind(float* buffer) const;

 private:
  ModelShape shape_;
  std::vector<TensorInfo> tensors_;
  std::vector<size_t> layer_offsets_;  // n_layer + 1 entries
  size_t n_params_ = 0;
};

// GPT-2 style random init from a seed: N(0, 0.02) weights, residual projections scaled by
// 1/sqrt(2 * n_layer), zero biases, LayerNorm weight 1 and bias 0.
void init_gpt2_params(const Gpt2Layout& layout, float* params, uint64_t seed);

}  // namespace lora
