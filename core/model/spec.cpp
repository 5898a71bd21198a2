#include "core/model/spec.h"

#include <cmath>
#include <sstream>

#include "core/error.h"
#include "core/json.h"

namespace lora {

std::string_view known_archs() { return "gpt2, llama, qwen2, mistral"; }

bool is_known_arch(std::string_view arch) {
  return arch == "gpt2" || arch == "llama" || arch == "qwen2" || arch == "mistral";
}

ModelSpec family_spec(const std::string& arch, const ModelSpec& sizes) {
  LORA_INPUT_CHECK(is_known_arch(arch), "unknown model architecture '", arch, "' (expected one of: ",
                   known_archs(), ")");
  ModelSpec s = sizes;
  s.arch = arch;
  if (arch == "gpt2") {
    s.norm = NormKind::kLayerNorm;
    s.norm_eps = 1e-5f;
    s.positions = PositionKind::kLearned;
    s.mlp = MlpKind::kGeluTanh;
    s.qkv_bias = s.o_bias = s.mlp_bias = true;
    s.tied_embeddings = true;
    s.conv1d = true;
    return s;
  }
  // The Llama family (Llama 2/3, Mistral, Qwen2 and their derivatives): pre-RMSNorm, RoPE, SwiGLU,
  // nn.Linear weights; Qwen2 alone has q/k/v biases. Defaults as transformers' config classes.
  s.norm = NormKind::kRmsNorm;
  s.norm_eps = 1e-6f;
  s.positions = PositionKind::kRope;
  s.rope_theta = 10000.0f;
  s.mlp = MlpKind::kSwiGlu;
  s.qkv_bias = arch == "qwen2";
  s.o_bias = false;
  s.mlp_bias = false;
  s.tied_embeddings = false;
  s.conv1d = false;
  return s;
}

ModelSpec gpt2_spec(int vocab_size, int max_seq_len, int n_layer, int n_head, int d_model) {
  ModelSpec s;
  s.vocab_size = vocab_size;
  s.max_seq_len = max_seq_len;
  s.n_layer = n_layer;
  s.n_head = n_head;
  s.d_model = d_model;
  return family_spec("gpt2", s);
}

void validate_spec(const ModelSpec& s, const std::string& where) {
  auto positive = [&](const char* key, int v) {
    LORA_INPUT_CHECK(v > 0, where, ": model.", key, ": expected a positive integer, got ", v);
  };
  positive("vocab_size", s.vocab_size);
  positive("max_seq_len", s.max_seq_len);
  positive("n_layer", s.n_layer);
  positive("n_head", s.n_head);
  positive("d_model", s.d_model);
  LORA_INPUT_CHECK(s.n_kv_head >= 0, where, ": model.n_kv_head: expected a positive integer, got ",
                   s.n_kv_head);
  LORA_INPUT_CHECK(s.head_dim >= 0, where, ": model.head_dim: expected a positive integer, got ",
                   s.head_dim);
  LORA_INPUT_CHECK(s.d_ff >= 0, where, ": model.d_ff: expected a positive integer, got ", s.d_ff);
  if (s.head_dim == 0) {
    LORA_INPUT_CHECK(s.d_model % s.n_head == 0, where, ": model.n_head: ", s.n_head,
                     " does not divide model.d_model = ", s.d_model);
  }
  LORA_INPUT_CHECK(s.n_head % s.kv_heads() == 0, where, ": model.n_kv_head: ", s.kv_heads(),
                   " does not divide model.n_head = ", s.n_head,
                   " (grouped-query attention shares each key/value head among n_head / n_kv_head "
                   "query heads)");
  if (s.is_gpt2()) {
    LORA_INPUT_CHECK(s.kv_heads() == s.n_head, where, ": model.n_kv_head: GPT-2 has no grouped-query "
                     "attention (expected ", s.n_head, " = n_head, got ", s.kv_heads(), ")");
    LORA_INPUT_CHECK(s.q_dim() == s.d_model, where, ": model.head_dim: GPT-2 needs n_head * head_dim = "
                     "d_model = ", s.d_model, ", got ", s.q_dim());
  }
  if (s.positions == PositionKind::kRope) {
    LORA_INPUT_CHECK(s.head_size() % 2 == 0, where, ": model.head_dim: RoPE rotates pairs of "
                     "dimensions, so head_dim must be even, got ", s.head_size());
    LORA_INPUT_CHECK(std::isfinite(s.rope_theta) && s.rope_theta > 0, where,
                     ": model.rope_theta: expected a number > 0, got ", s.rope_theta);
    if (s.rope_scaling.llama3) {
      const RopeScaling& r = s.rope_scaling;
      LORA_INPUT_CHECK(r.factor > 0 && r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor &&
                           r.original_max_position_embeddings > 0,
                       where, ": rope_scaling (llama3): expected factor > 0, 0 < low_freq_factor < "
                       "high_freq_factor and original_max_position_embeddings > 0");
    }
  }
  LORA_INPUT_CHECK(std::isfinite(s.norm_eps) && s.norm_eps > 0, where,
                   ": model.norm_eps: expected a number > 0, got ", s.norm_eps);
}

std::string spec_to_json(const ModelSpec& s) {
  json::Value v = json::Value::object();
  v.set("arch", s.arch);
  v.set("vocab_size", s.vocab_size);
  v.set("max_seq_len", s.max_seq_len);
  v.set("n_layer", s.n_layer);
  v.set("n_head", s.n_head);
  v.set("n_kv_head", s.kv_heads());
  v.set("d_model", s.d_model);
  v.set("head_dim", s.head_size());
  v.set("d_ff", s.ff());
  v.set("norm", s.norm == NormKind::kLayerNorm ? "layernorm" : "rmsnorm");
  v.set("norm_eps", static_cast<double>(s.norm_eps));
  v.set("positions", s.positions == PositionKind::kLearned ? "learned" : "rope");
  v.set("rope_theta", static_cast<double>(s.rope_theta));
  if (s.rope_scaling.llama3) {
    json::Value r = json::Value::object();
    r.set("factor", static_cast<double>(s.rope_scaling.factor));
    r.set("low_freq_factor", static_cast<double>(s.rope_scaling.low_freq_factor));
    r.set("high_freq_factor", static_cast<double>(s.rope_scaling.high_freq_factor));
    r.set("original_max_position_embeddings", s.rope_scaling.original_max_position_embeddings);
    v.set("rope_scaling_llama3", r);
  }
  v.set("sliding_window", s.sliding_window);
  v.set("mlp", s.mlp == MlpKind::kGeluTanh ? "gelu_tanh" : "swiglu");
  v.set("qkv_bias", s.qkv_bias);
  v.set("o_bias", s.o_bias);
  v.set("mlp_bias", s.mlp_bias);
  v.set("tied_embeddings", s.tied_embeddings);
  v.set("conv1d", s.conv1d);
  return json::dump(v);
}

ModelSpec spec_from_json(const std::string& text, const std::string& where) {
  json::Value v;
  try {
    v = json::parse(text);
  } catch (const json::ParseError& e) {
    throw InputError(where + ": model spec: " + e.what());
  }
  LORA_INPUT_CHECK(v.is_object(), where, ": model spec: expected a JSON object");
  auto get = [&](const char* key) -> const json::Value& {
    const json::Value* x = v.find(key);
    LORA_INPUT_CHECK(x != nullptr, where, ": model spec: missing \"", key, "\"");
    return *x;
  };
  auto get_int = [&](const char* key) {
    const json::Value& x = get(key);
    LORA_INPUT_CHECK(x.is_integer() && x.as_int64() >= 0 && x.as_int64() <= (1 << 30), where,
                     ": model spec: \"", key, "\": expected a non-negative integer");
    return static_cast<int>(x.as_int64());
  };
  auto get_num = [&](const json::Value& obj, const char* key) {
    const json::Value* x = obj.find(key);
    LORA_INPUT_CHECK(x && x->is_number(), where, ": model spec: \"", key, "\": expected a number");
    return static_cast<float>(x->as_double());
  };
  auto get_bool = [&](const char* key) {
    const json::Value& x = get(key);
    LORA_INPUT_CHECK(x.is_bool(), where, ": model spec: \"", key, "\": expected true or false");
    return x.as_bool();
  };
  auto get_str = [&](const char* key) {
    const json::Value& x = get(key);
    LORA_INPUT_CHECK(x.is_string(), where, ": model spec: \"", key, "\": expected a string");
    return x.as_string();
  };
  ModelSpec s;
  s.arch = get_str("arch");
  LORA_INPUT_CHECK(is_known_arch(s.arch), where, ": model spec: unknown arch '", s.arch, "'");
  s.vocab_size = get_int("vocab_size");
  s.max_seq_len = get_int("max_seq_len");
  s.n_layer = get_int("n_layer");
  s.n_head = get_int("n_head");
  s.n_kv_head = get_int("n_kv_head");
  s.d_model = get_int("d_model");
  s.head_dim = get_int("head_dim");
  s.d_ff = get_int("d_ff");
  const std::string norm = get_str("norm");
  LORA_INPUT_CHECK(norm == "layernorm" || norm == "rmsnorm", where, ": model spec: norm '", norm, "'");
  s.norm = norm == "layernorm" ? NormKind::kLayerNorm : NormKind::kRmsNorm;
  s.norm_eps = get_num(v, "norm_eps");
  const std::string pos = get_str("positions");
  LORA_INPUT_CHECK(pos == "learned" || pos == "rope", where, ": model spec: positions '", pos, "'");
  s.positions = pos == "learned" ? PositionKind::kLearned : PositionKind::kRope;
  s.rope_theta = get_num(v, "rope_theta");
  if (const json::Value* r = v.find("rope_scaling_llama3")) {
    LORA_INPUT_CHECK(r->is_object(), where, ": model spec: rope_scaling_llama3: expected an object");
    s.rope_scaling.llama3 = true;
    s.rope_scaling.factor = get_num(*r, "factor");
    s.rope_scaling.low_freq_factor = get_num(*r, "low_freq_factor");
    s.rope_scaling.high_freq_factor = get_num(*r, "high_freq_factor");
    s.rope_scaling.original_max_position_embeddings =
        static_cast<int>(get_num(*r, "original_max_position_embeddings"));
  }
  s.sliding_window = get_int("sliding_window");
  const std::string mlp = get_str("mlp");
  LORA_INPUT_CHECK(mlp == "gelu_tanh" || mlp == "swiglu", where, ": model spec: mlp '", mlp, "'");
  s.mlp = mlp == "gelu_tanh" ? MlpKind::kGeluTanh : MlpKind::kSwiGlu;
  s.qkv_bias = get_bool("qkv_bias");
  s.o_bias = get_bool("o_bias");
  s.mlp_bias = get_bool("mlp_bias");
  s.tied_embeddings = get_bool("tied_embeddings");
  s.conv1d = get_bool("conv1d");
  validate_spec(s, where + ": model spec");
  return s;
}

std::string_view norm_kind_name(NormKind k) {
  return k == NormKind::kLayerNorm ? "LayerNorm" : "RMSNorm";
}
std::string_view position_kind_name(PositionKind k) {
  return k == PositionKind::kLearned ? "learned positions" : "RoPE";
}
std::string_view mlp_kind_name(MlpKind k) { return k == MlpKind::kGeluTanh ? "GELU" : "SwiGLU"; }

std::string describe_spec(const ModelSpec& s) {
  std::ostringstream os;
  os << s.arch << ": " << s.n_layer << " layers, d_model " << s.d_model << ", " << s.n_head
     << " heads";
  if (s.kv_heads() != s.n_head || s.head_size() * s.n_head != s.d_model)
    os << " (" << s.kv_heads() << " kv, head_dim " << s.head_size() << ")";
  os << ", d_ff " << s.ff() << ", vocab " << s.vocab_size << ", max_seq_len " << s.max_seq_len
     << ", " << norm_kind_name(s.norm) << ", " << position_kind_name(s.positions);
  if (s.positions == PositionKind::kRope) {
    os << " theta " << s.rope_theta;
    if (s.rope_scaling.llama3) os << " (llama3 scaling x" << s.rope_scaling.factor << ")";
  }
  os << ", " << mlp_kind_name(s.mlp) << ", " << (s.tied_embeddings ? "tied" : "untied") << " head";
  return os.str();
}

}  // namespace lora
