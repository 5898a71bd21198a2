#include "core/model/base_layout.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace lora {

BaseLayout::BaseLayout(const ModelSpec& s) : spec_(s) {
  validate_spec(s, "model");
  const int64_t C = s.d_model, V = s.vocab_size, F = s.ff(), Q = s.q_dim(), KV = s.kv_dim();
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    TensorInfo t;
    t.name = std::move(name);
    t.shape = std::move(shape);
    t.numel = 1;
    for (int64_t d : t.shape) t.numel *= static_cast<size_t>(d);
    t.offset = offset;
    offset += t.numel;
    by_name_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  };
  if (s.is_gpt2()) {
    add("wte.weight", {V, C});
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
      add(p + "mlp.c_fc.weight", {C, F});
      add(p + "mlp.c_fc.bias", {F});
      add(p + "mlp.c_proj.weight", {F, C});
      add(p + "mlp.c_proj.bias", {C});
    }
    layer_offsets_.push_back(offset);
    add("ln_f.weight", {C});
    add("ln_f.bias", {C});
  } else {
    add("model.embed_tokens.weight", {V, C});
    for (int l = 0; l < s.n_layer; ++l) {
      layer_offsets_.push_back(offset);
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {C});
      add(p + "self_attn.q_proj.weight", {Q, C});
      add(p + "self_attn.k_proj.weight", {KV, C});
      add(p + "self_attn.v_proj.weight", {KV, C});
      if (s.qkv_bias) {
        add(p + "self_attn.q_proj.bias", {Q});
        add(p + "self_attn.k_proj.bias", {KV});
        add(p + "self_attn.v_proj.bias", {KV});
      }
      add(p + "self_attn.o_proj.weight", {C, Q});
      if (s.o_bias) add(p + "self_attn.o_proj.bias", {C});
      add(p + "post_attention_layernorm.weight", {C});
      add(p + "mlp.gate_proj.weight", {F, C});
      add(p + "mlp.up_proj.weight", {F, C});
      if (s.mlp_bias) {
        add(p + "mlp.gate_proj.bias", {F});
        add(p + "mlp.up_proj.bias", {F});
      }
      add(p + "mlp.down_proj.weight", {C, F});
      if (s.mlp_bias) add(p + "mlp.down_proj.bias", {C});
    }
    layer_offsets_.push_back(offset);
    add("model.norm.weight", {C});
    if (!s.tied_embeddings) add("lm_head.weight", {V, C});
  }
  n_params_ = offset;
}

const TensorInfo* BaseLayout::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

BaseParams BaseLayout::bind(float* buffer) const {
  auto at = [&](const std::string& name) -> float* {
    const TensorInfo* t = find(name);
    return t ? buffer + t->offset : nullptr;
  };
  const ModelSpec& s = spec_;
  BaseParams p{};
  p.layers.resize(s.n_layer);
  if (s.is_gpt2()) {
    p.wte = at("wte.weight");
    p.wpe = at("wpe.weight");
    for (int l = 0; l < s.n_layer; ++l) {
      const std::string n = "h." + std::to_string(l) + ".";
      LayerParams& L = p.layers[l];
      L.norm1_w = at(n + "ln_1.weight");
      L.norm1_b = at(n + "ln_1.bias");
      L.qkv_w = at(n + "attn.c_attn.weight");
      L.qkv_b = at(n + "attn.c_attn.bias");
      L.o_w = at(n + "attn.c_proj.weight");
      L.o_b = at(n + "attn.c_proj.bias");
      L.norm2_w = at(n + "ln_2.weight");
      L.norm2_b = at(n + "ln_2.bias");
      L.up_w = at(n + "mlp.c_fc.weight");
      L.up_b = at(n + "mlp.c_fc.bias");
      L.down_w = at(n + "mlp.c_proj.weight");
      L.down_b = at(n + "mlp.c_proj.bias");
    }
    p.normf_w = at("ln_f.weight");
    p.normf_b = at("ln_f.bias");
    p.lm_head = p.wte;
    return p;
  }
  p.wte = at("model.embed_tokens.weight");
  p.wpe = nullptr;
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string n = "model.layers." + std::to_string(l) + ".";
    LayerParams& L = p.layers[l];
    L.norm1_w = at(n + "input_layernorm.weight");
    L.norm1_b = nullptr;
    L.qkv_w = at(n + "self_attn.q_proj.weight");  // k and v follow it
    L.qkv_b = at(n + "self_attn.q_proj.bias");
    L.o_w = at(n + "self_attn.o_proj.weight");
    L.o_b = at(n + "self_attn.o_proj.bias");
    L.norm2_w = at(n + "post_attention_layernorm.weight");
    L.norm2_b = nullptr;
    L.up_w = at(n + "mlp.gate_proj.weight");  // up follows it
    L.up_b = at(n + "mlp.gate_proj.bias");
    L.down_w = at(n + "mlp.down_proj.weight");
    L.down_b = at(n + "mlp.down_proj.bias");
  }
  p.normf_w = at("model.norm.weight");
  p.normf_b = nullptr;
  p.lm_head = s.tied_embeddings ? p.wte : at("lm_head.weight");
  return p;
}

void init_base_params(const BaseLayout& layout, float* params, uint64_t seed) {
  const ModelSpec& s = layout.spec();
  const float residual_std = 0.02f / std::sqrt(2.0f * s.n_layer);
  for (size_t ti = 0; ti < layout.tensors().size(); ++ti) {
    const TensorInfo& t = layout.tensors()[ti];
    float* p = params + t.offset;
    const std::string& n = t.name;
    auto ends_with = [&](std::string_view suffix) {
      return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    const bool norm_weight = ends_with("ln_1.weight") || ends_with("ln_2.weight") ||
                             n == "ln_f.weight" || ends_with("layernorm.weight") ||
                             n == "model.norm.weight";
    if (norm_weight) {
      std::fill(p, p + t.numel, 1.0f);
    } else if (ends_with(".bias")) {
      std::fill(p, p + t.numel, 0.0f);
    } else {
      const bool residual =
          s.is_gpt2() && (ends_with("attn.c_proj.weight") || ends_with("mlp.c_proj.weight"));
      const float std_dev = residual ? residual_std : 0.02f;
      for (size_t i = 0; i < t.numel; ++i) p[i] = std_dev * normal01(seed, 1000 + ti, i);
    }
  }
}

}  // namespace lora
