#include "core/model/lora_layout.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace lora {

namespace {

struct TargetNames {
  LoraTarget target;
  std::string_view name;     // what configs and checkpoints use
  std::string_view hf_name;  // module path below the block
  std::vector<std::string_view> aliases;
};

const std::vector<TargetNames>& gpt2_names() {
  static const std::vector<TargetNames> names = {
      {LoraTarget::kAttnQkv, "attn.qkv", "attn.c_attn", {"c_attn", "attn.c_attn", "qkv"}},
      {LoraTarget::kAttnProj, "attn.proj", "attn.c_proj", {"attn.c_proj", "c_proj", "o_proj"}},
      {LoraTarget::kMlpFc, "mlp.fc", "mlp.c_fc", {"c_fc", "mlp.c_fc", "fc"}},
      {LoraTarget::kMlpProj, "mlp.proj", "mlp.c_proj", {"mlp.c_proj"}},
  };
  return names;
}

const std::vector<TargetNames>& llama_names() {
  static const std::vector<TargetNames> names = {
      {LoraTarget::kQ, "q_proj", "self_attn.q_proj", {"self_attn.q_proj"}},
      {LoraTarget::kK, "k_proj", "self_attn.k_proj", {"self_attn.k_proj"}},
      {LoraTarget::kV, "v_proj", "self_attn.v_proj", {"self_attn.v_proj"}},
      {LoraTarget::kAttnProj, "o_proj", "self_attn.o_proj", {"self_attn.o_proj"}},
      {LoraTarget::kGate, "gate_proj", "mlp.gate_proj", {"mlp.gate_proj"}},
      {LoraTarget::kUp, "up_proj", "mlp.up_proj", {"mlp.up_proj"}},
      {LoraTarget::kMlpProj, "down_proj", "mlp.down_proj", {"mlp.down_proj"}},
  };
  return names;
}

const std::vector<TargetNames>& names_of(const ModelSpec& spec) {
  return spec.is_gpt2() ? gpt2_names() : llama_names();
}

const TargetNames* entry(LoraTarget t, const ModelSpec& spec) {
  for (const TargetNames& n : names_of(spec))
    if (n.target == t) return &n;
  return nullptr;
}

}  // namespace

const std::vector<LoraTarget>& family_targets(const ModelSpec& spec) {
  static const std::vector<LoraTarget> gpt2 = {LoraTarget::kAttnQkv, LoraTarget::kAttnProj,
                                               LoraTarget::kMlpFc, LoraTarget::kMlpProj};
  static const std::vector<LoraTarget> llama = {LoraTarget::kQ,        LoraTarget::kK,
                                                LoraTarget::kV,        LoraTarget::kAttnProj,
                                                LoraTarget::kGate,     LoraTarget::kUp,
                                                LoraTarget::kMlpProj};
  return spec.is_gpt2() ? gpt2 : llama;
}

std::string_view lora_target_name(LoraTarget t, const ModelSpec& spec) {
  const TargetNames* n = entry(t, spec);
  return n ? n->name : "?";
}

std::string_view lora_target_hf_name(LoraTarget t, const ModelSpec& spec) {
  const TargetNames* n = entry(t, spec);
  return n ? n->hf_name : "?";
}

std::optional<LoraTarget> parse_lora_target(std::string_view name, const ModelSpec& spec) {
  for (const TargetNames& n : names_of(spec)) {
    if (name == n.name) return n.target;
    for (std::string_view a : n.aliases)
      if (name == a) return n.target;
  }
  return std::nullopt;
}

std::string lora_target_names_help(const ModelSpec& spec) {
  std::string out;
  for (const TargetNames& n : names_of(spec)) {
    out += (out.empty() ? "" : ", ") + std::string(n.name);
    for (std::string_view a : n.aliases)
      if (a != n.name) out += "|" + std::string(a);
  }
  return out + ", or all-linear";
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

float lora_scaling(float alpha, int rank, bool rslora) {
  return rslora ? alpha / std::sqrt(static_cast<float>(rank)) : alpha / static_cast<float>(rank);
}

float LoraSpec::scaling() const { return lora_scaling(alpha, rank, rslora); }

int LoraSpec::rank_of(const std::string& module) const {
  const auto it = module_settings.find(module);
  return it == module_settings.end() ? rank : it->second.rank;
}

float LoraSpec::alpha_of(const std::string& module) const {
  const auto it = module_settings.find(module);
  return it == module_settings.end() ? alpha : it->second.alpha;
}

float LoraSpec::scaling_of(const std::string& module) const {
  return lora_scaling(alpha_of(module), rank_of(module), rslora);
}

bool LoraSpec::has_target(LoraTarget t) const {
  return std::find(targets.begin(), targets.end(), t) != targets.end();
}

int LoraModule::dropout_stream() const {
  const int t = static_cast<int>(target);
  if (t < 4) return layer * 4 + t;  // the GPT-2 targets, numbered as they always were
  return (1 << 24) + layer * kNumLoraTargets + t;
}

TargetGeometry lora_target_geometry(LoraTarget t, const ModelSpec& s) {
  LORA_INPUT_CHECK(entry(t, s) != nullptr, "lora.targets: ", s.arch, " models have no target ",
                   static_cast<int>(t), " (expected one of: ", lora_target_names_help(s), ")");
  const int C = s.d_model, F = s.ff(), Q = s.q_dim(), KV = s.kv_dim(), QKV = s.qkv_dim();
  switch (t) {
    case LoraTarget::kAttnQkv: return {BlockLinear::kAttnIn, C, QKV, 0, QKV};
    case LoraTarget::kQ: return {BlockLinear::kAttnIn, C, Q, 0, QKV};
    case LoraTarget::kK: return {BlockLinear::kAttnIn, C, KV, Q, QKV};
    case LoraTarget::kV: return {BlockLinear::kAttnIn, C, KV, Q + KV, QKV};
    case LoraTarget::kAttnProj: return {BlockLinear::kAttnOut, Q, C, 0, C};
    case LoraTarget::kMlpFc: return {BlockLinear::kMlpIn, C, F, 0, F};
    case LoraTarget::kGate: return {BlockLinear::kMlpIn, C, F, 0, 2 * F};
    case LoraTarget::kUp: return {BlockLinear::kMlpIn, C, F, F, 2 * F};
    case LoraTarget::kMlpProj: return {BlockLinear::kMlpOut, F, C, 0, C};
  }
  return {BlockLinear::kAttnIn, 0, 0, 0, 0};
}

LoraLayout::LoraLayout(const ModelSpec& model, const LoraSpec& spec) : spec_(spec) {
  LORA_INPUT_CHECK(!spec.targets.empty(), "lora.targets: expected at least one target");
  for (size_t i = 0; i < spec.targets.size(); ++i) {
    LORA_INPUT_CHECK(entry(spec.targets[i], model) != nullptr, "lora.targets: ", model.arch,
                     " models have no target number ", static_cast<int>(spec.targets[i]),
                     " (expected one of: ", lora_target_names_help(model), ")");
    for (size_t j = i + 1; j < spec.targets.size(); ++j) {
      LORA_INPUT_CHECK(spec.targets[i] != spec.targets[j], "lora.targets: '",
                       lora_target_name(spec.targets[i], model), "' is listed twice");
    }
  }
  LORA_INPUT_CHECK(spec.rank > 0, "lora.rank: expected a positive integer, got ", spec.rank);
  for (LoraTarget t : spec.targets) {
    const TargetGeometry g = lora_target_geometry(t, model);
    LORA_INPUT_CHECK(spec.rank <= std::min(g.d_in, g.d_out), "lora.rank: ", spec.rank,
                     " exceeds min(d_in, d_out) = ", std::min(g.d_in, g.d_out), " of target ",
                     lora_target_name(t, model));
  }
  for (const auto& [name, setting] : spec.module_settings) {
    LORA_INPUT_CHECK(setting.rank > 0, "module '", name, "': rank: expected a positive integer, got ",
                     setting.rank);
    LORA_INPUT_CHECK(setting.alpha > 0 && std::isfinite(setting.alpha), "module '", name,
                     "': alpha: expected a number > 0, got ", setting.alpha);
  }
  const std::string block_prefix = model.is_gpt2() ? "h." : "model.layers.";
  index_.assign(static_cast<size_t>(model.n_layer) * kNumLoraTargets, -1);
  layer_offsets_.push_back(0);
  size_t offset = 0;
  for (int l = 0; l < model.n_layer; ++l) {
    for (LoraTarget t : family_targets(model)) {
      if (!spec.has_target(t)) continue;
      const TargetGeometry g = lora_target_geometry(t, model);
      LoraModule m;
      m.layer = l;
      m.target = t;
      m.linear = g.linear;
      m.d_in = g.d_in;
      m.d_out = g.d_out;
      m.col_offset = g.col_offset;
      m.ld_out = g.ld_out;
      m.name = block_prefix + std::to_string(l) + "." + std::string(lora_target_hf_name(t, model));
      m.rank = spec.rank_of(m.name);
      m.alpha = spec.alpha_of(m.name);
      m.scaling = spec.scaling_of(m.name);
      LORA_INPUT_CHECK(m.rank <= std::min(g.d_in, g.d_out), "module '", m.name, "': rank ", m.rank,
                       " exceeds min(d_in, d_out) = ", std::min(g.d_in, g.d_out));
      m.a_offset = offset;
      offset += m.n_a();
      m.b_offset = offset;
      offset += m.n_b();
      max_rank_ = std::max(max_rank_, m.rank);
      index_[static_cast<size_t>(l) * kNumLoraTargets + static_cast<int>(t)] =
          static_cast<int>(modules_.size());
      modules_.push_back(std::move(m));
    }
    layer_offsets_.push_back(offset);
  }
  n_params_ = offset;
  for (const auto& [name, setting] : spec.module_settings) {
    LORA_INPUT_CHECK(find(name) != nullptr, "module '", name,
                     "' has its own rank and alpha but is not an adapted module of this ", model.arch,
                     " model with targets ", [&] {
                       std::string t;
                       for (LoraTarget x : spec.targets)
                         t += (t.empty() ? "" : ",") + std::string(lora_target_name(x, model));
                       return t;
                     }());
  }
}

const LoraModule* LoraLayout::find(int layer, LoraTarget target) const {
  int i = index_[static_cast<size_t>(layer) * kNumLoraTargets + static_cast<int>(target)];
  return i < 0 ? nullptr : &modules_[i];
}

std::vector<const LoraModule*> LoraLayout::modules_of(int layer, BlockLinear linear) const {
  std::vector<const LoraModule*> out;
  for (int t = 0; t < kNumLoraTargets; ++t) {
    const int i = index_[static_cast<size_t>(layer) * kNumLoraTargets + t];
    if (i >= 0 && modules_[i].linear == linear) out.push_back(&modules_[i]);
  }
  std::sort(out.begin(), out.end(),
            [](const LoraModule* a, const LoraModule* b) { return a->a_offset < b->a_offset; });
  return out;
}

const LoraModule* LoraLayout::find(const std::string& module_name) const {
  for (const LoraModule& m : modules_)
    if (m.name == module_name) return &m;
  return nullptr;
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
