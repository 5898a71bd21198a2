#include "core/model/lora_layout.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/error.h"
#include "core/rng.h"

namespace lora {

std::string_view lora_target_name(LoraTarget t) {
  switch (t) {
    case LoraTarget::kAttnQkv: return "attn.qkv";
    case LoraTarget::kAttnProj: return "attn.proj";
    case LoraTarget::kMlpFc: return "mlp.fc";
    case LoraTarget::kMlpProj: return "mlp.proj";
  }
  return "?";
}

std::string_view lora_target_hf_name(LoraTarget t) {
  switch (t) {
    case LoraTarget::kAttnQkv: return "attn.c_attn";
    case LoraTarget::kAttnProj: return "attn.c_proj";
    case LoraTarget::kMlpFc: return "mlp.c_fc";
    case LoraTarget::kMlpProj: return "mlp.c_proj";
  }
  return "?";
}

std::optional<LoraTarget> parse_lora_target(std::string_view n) {
  if (n == "attn.qkv" || n == "c_attn" || n == "attn.c_attn" || n == "qkv") return LoraTarget::kAttnQkv;
  if (n == "attn.proj" || n == "attn.c_proj" || n == "c_proj" || n == "o_proj")
    return LoraTarget::kAttnProj;
  if (n == "mlp.fc" || n == "c_fc" || n == "mlp.c_fc" || n == "fc") return LoraTarget::kMlpFc;
  if (n == "mlp.proj" || n == "mlp.c_proj") return LoraTarget::kMlpProj;
  return std::nullopt;
}

std::string_view lora_init_a_name(LoraInitA a) {
  switch (a) {
    case LoraInitA::kGaussian: return "gaussian";
    case LoraInitA::kKaiming: return "kaiming";
    case LoraInitA::kZeros: return "zeros";
  }
  return "?";
}

std::string_view lora_init_b_name(LoraInitB b) {
  return b == LoraInitB::kZeros ? "zeros" : "gaussian";
}

float LoraSpec::scaling() const {
  return rslora ? alpha / std::sqrt(static_cast<float>(rank)) : alpha / static_cast<float>(rank);
}

bool LoraSpec::has_target(LoraTarget t) const {
  return std::find(targets.begin(), targets.end(), t) != targets.end();
}

std::string LoraModule::name() const {
  return "h." + std::to_string(layer) + "." + std::string(lora_target_hf_name(target));
}

std::pair<int, int> lora_target_dims(LoraTarget t, int d_model) {
  switch (t) {
    case LoraTarget::kAttnQkv: return {d_model, 3 * d_model};
    case LoraTarget::kAttnProj: return {d_model, d_model};
    case LoraTarget::kMlpFc: return {d_model, 4 * d_model};
    case LoraTarget::kMlpProj: return {4 * d_model, d_model};
  }
  return {0, 0};
}

LoraLayout::LoraLayout(const ModelShape& shape, const LoraSpec& spec) : spec_(spec) {
  LORA_INPUT_CHECK(!spec.targets.empty(), "lora.targets: expected at least one target");
  for (size_t i = 0; i < spec.targets.size(); ++i) {
    for (size_t j = i + 1; j < spec.targets.size(); ++j) {
      LORA_INPUT_CHECK(spec.targets[i] != spec.targets[j], "lora.targets: '",
                       lora_target_name(spec.targets[i]), "' is listed twice");
    }
  }
  LORA_INPUT_CHECK(spec.rank > 0, "lora.rank: expected a positive integer, got ", spec.rank);
  for (LoraTarget t : spec.targets) {
    auto [d_in, d_out] = lora_target_dims(t, shape.d_model);
    LORA_INPUT_CHECK(spec.rank <= std::min(d_in, d_out), "lora.rank: ", spec.rank,
                     " exceeds min(d_in, d_out) = ", std::min(d_in, d_out), " of target ",
                     lora_target_name(t));
  }
  index_.assign(static_cast<size_t>(shape.n_layer) * kNumLoraTargets, -1);
  layer_offsets_.push_back(0);
  size_t offset = 0;
  for (int l = 0; l < shape.n_layer; ++l) {
    for (int ti = 0; ti < kNumLoraTargets; ++ti) {
      auto t = static_cast<LoraTarget>(ti);
      if (!spec.has_target(t)) continue;
      LoraModule m;
      m.layer = l;
      m.target = t;
      std::tie(m.d_in, m.d_out) = lora_target_dims(t, shape.d_model);
      m.rank = spec.rank;
      m.a_offset = offset;
      offset += m.n_a();
      m.b_offset = offset;
      offset += m.n_b();
      index_[static_cast<size_t>(l) * kNumLoraTargets + ti] = static_cast<int>(modules_.size());
      modules_.push_back(m);
    }
    layer_offsets_.push_back(offset);
  }
  n_params_ = offset;
}

const LoraModule* LoraLayout::find(int layer, LoraTarget target) const {
  int i = index_[static_cast<size_t>(layer) * kNumLoraTargets + static_cast<int>(target)];
  return i < 0 ? nullptr : &modules_[i];
}

void init_lora_params(const LoraLayout& layout, float* params, uint64_t seed) {
  const LoraSpec& spec = layout.spec();
  for (size_t mi = 0; mi < layout.modules().size(); ++mi) {
    const LoraModule& m = layout.modules()[mi];
    float* a = params + m.a_offset;
    float* b = params + m.b_offset;
    const uint64_t stream_a = 2 * mi + 1, stream_b = 2 * mi + 2;
    const float std_r = 1.0f / static_cast<float>(m.rank);
    switch (spec.init_a) {
      case LoraInitA::kGaussian:
        for (size_t i = 0; i < m.n_a(); ++i) a[i] = std_r * normal01(seed, stream_a, i);
        break;
      case LoraInitA::kKaiming: {
        // kaiming_uniform_(a=sqrt(5)) on a [r, d_in] weight: bound = 1 / sqrt(d_in).
        const float bound = 1.0f / std::sqrt(static_cast<float>(m.d_in));
        for (size_t i = 0; i < m.n_a(); ++i)
          a[i] = bound * (2.0f * uniform01(hash_u64(seed, stream_a, i)) - 1.0f);
        break;
      }
      case LoraInitA::kZeros:
        std::fill(a, a + m.n_a(), 0.0f);
        break;
    }
    if (spec.init_b == LoraInitB::kZeros) {
      std::fill(b, b + m.n_b(), 0.0f);
    } else {
      for (size_t i = 0; i < m.n_b(); ++i) b[i] = std_r * normal01(seed, stream_b, i);
    }
  }
}

}  // namespace lora
