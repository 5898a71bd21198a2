#include "core/model/gpt2_layout.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace lora {

Gpt2Layout::Gpt2Layout(const ModelShape& s) : shape_(s) {
  LORA_INPUT_CHECK(s.vocab_size > 0, "model.vocab_size: expected a positive integer, got ",
                   s.vocab_size);
  LORA_INPUT_CHECK(s.max_seq_len > 0, "model.max_seq_len: expected a positive integer, got ",
                   s.max_seq_len);
  LORA_INPUT_CHECK(s.n_layer > 0, "model.n_layer: expected a positive integer, got ", s.n_layer);
  LORA_INPUT_CHECK(s.n_head > 0, "model.n_head: expected a positive integer, got ", s.n_head);
  LORA_INPUT_CHECK(s.d_model > 0, "model.d_model: expected a positive integer, got ", s.d_model);
  LORA_INPUT_CHECK(s.d_model % s.n_head == 0, "model.n_head: ", s.n_head,
                   " does not divide model.d_model = ", s.d_model);
  const int64_t C = s.d_model;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    TensorInfo t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.numel = 1;
    for (int64_t d : t.shape) t.numel *= static_cast<size_t>(d);
    t.offset = offset;
    offset += t.numel;
    tensors_.push_back(std::move(t));
  };
  add("wte.weight", {s.vocab_size, C});
  add("wpe.weight", {s.max_seq_len, C});
  for (int l = 0; l < s.n_layer; ++l) {
    layer_offsets_.push_back(offset);
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C});
    add(p + "ln_1.bias", {C});
    add(p + "attn.c_attn.weight", {C, 3 * C});
    add(p + "attn.c_attn.bias", {3 * C});
    add(p + "attn.c_proj.weight", {C, C});
    add(p + "attn.c_proj.bias", {C});
    add(p + "ln_2.weight", {C});
    add(p + "ln_2.bias", {C});
    add(p + "mlp.c_fc.weight", {C, 4 * C});
    add(p + "mlp.c_fc.bias", {4 * C});
    add(p + "mlp.c_proj.weight", {4 * C, C});
    add(p + "mlp.c_proj.bias", {C});
  }
  layer_offsets_.push_back(offset);
  add("ln_f.weight", {C});
  add("ln_f.bias", {C});
  n_params_ = offset;
}

size_t Gpt2Layout::layer_begin(int layer) const { return layer_offsets_.at(layer); }
size_t Gpt2Layout::layer_end(int layer) const { return layer_offsets_.at(layer + 1); }

const TensorInfo* Gpt2Layout::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

Gpt2Params Gpt2Layout::bind(float* buffer) const {
  Gpt2Params p{};
  size_t i = 0;
  auto next = [&]() { return buffer + tensors_[i++].offset; };
  p.wte = next();
  p.wpe = next();
  p.layers.resize(shape_.n_layer);
  for (auto& L : p.layers) {
    L.ln1_w = next();
    L.ln1_b = next();
    L.qkv_w = next();
    L.qkv_b = next();
    L.proj_w = next();
    L.proj_b = next();
    L.ln2_w = next();
    L.ln2_b = next();
    L.fc_w = next();
    L.fc_b = next();
    L.fcproj_w = next();
    L.fcproj_b = next();
  }
  p.lnf_w = next();
  p.lnf_b = next();
  return p;
}

void init_gpt2_params(const Gpt2Layout& layout, float* params, uint64_t seed) {
  const float residual_std = 0.02f / std::sqrt(2.0f * layout.shape().n_layer);
  for (size_t ti = 0; ti < layout.tensors().size(); ++ti) {
    const TensorInfo& t = layout.tensors()[ti];
    float* p = params + t.offset;
    const std::string& n = t.name;
    auto ends_with = [&](std::string_view suffix) {
      return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("ln_1.weight") || ends_with("ln_2.weight") || n == "ln_f.weight") {
      std::fill(p, p + t.numel, 1.0f);
    } else if (ends_with(".bias")) {
      std::fill(p, p + t.numel, 0.0f);
    } else {
      const bool residual = ends_with("attn.c_proj.weight") || ends_with("mlp.c_proj.weight");
      const float std_dev = residual ? residual_std : 0.02f;
      for (size_t i = 0; i < t.numel; ++i) p[i] = std_dev * normal01(seed, 1000 + ti, i);
    }
  }
}

}  // namespace lora
