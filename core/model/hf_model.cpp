#include "core/model/hf_model.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/safetensors.h"

namespace lora {

namespace fs = std::filesystem;

namespace {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LORA_INPUT_CHECK(in.is_open(), path, ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  LORA_INPUT_CHECK(!in.bad(), path, ": error while reading");
  return text.str();
}

json::Value read_json_object(const std::string& path) {
  json::Value v;
  try {
    v = json::parse(read_text_file(path));
  } catch (const json::ParseError& e) {
    throw InputError(path + ": invalid JSON: " + e.what());
  }
  LORA_INPUT_CHECK(v.is_object(), path, ": expected a JSON object, got ", json::type_name(v.type()));
  return v;
}

// Typed reads of config.json keys, each naming the file and key on a bad value.
class ConfigReader {
 public:
  ConfigReader(const std::string& path, const json::Value& obj) : path_(path), obj_(obj) {}

  // The key's value, nullptr when absent or null.
  const json::Value* find(const char* key) const {
    const json::Value* v = obj_.find(key);
    return v && !v->is_null() ? v : nullptr;
  }
  // The key's value, null included; nullptr when absent.
  const json::Value* raw(const char* key) const { return obj_.find(key); }

  int positive_int(const char* key, std::optional<int> fallback) const {
    const json::Value* v = find(key);
    if (!v) {
      LORA_INPUT_CHECK(fallback.has_value(), path_, ": missing key \"", key, "\"");
      return *fallback;
    }
    LORA_INPUT_CHECK(v->is_integer() && v->as_int64() > 0 && v->as_int64() <= INT_MAX, path_,
                     ": \"", key, "\": expected a positive integer, got ", json::dump(*v));
    return static_cast<int>(v->as_int64());
  }

  double number(const char* key, double fallback) const {
    const json::Value* v = find(key);
    if (!v) return fallback;
    LORA_INPUT_CHECK(v->is_number() && std::isfinite(v->as_double()), path_, ": \"", key,
                     "\": expected a number, got ", json::dump(*v));
    return v->as_double();
  }

  bool boolean(const char* key, bool fallback) const {
    const json::Value* v = find(key);
    if (!v) return fallback;
    LORA_INPUT_CHECK(v->is_bool(), path_, ": \"", key, "\": expected true or false, got ",
                     json::dump(*v));
    return v->as_bool();
  }

  std::string string(const char* key, const std::string& fallback) const {
    const json::Value* v = find(key);
    if (!v) return fallback;
    LORA_INPUT_CHECK(v->is_string(), path_, ": \"", key, "\": expected a string, got ",
                     json::dump(*v));
    return v->as_string();
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const json::Value& obj_;
};

ModelSpec gpt2_spec_from_config(const ConfigReader& r) {
  ModelSpec sizes;
  sizes.vocab_size = r.positive_int("vocab_size", 50257);
  sizes.max_seq_len = r.positive_int("n_positions", 1024);
  sizes.d_model = r.positive_int("n_embd", 768);
  sizes.n_layer = r.positive_int("n_layer", 12);
  sizes.n_head = r.positive_int("n_head", 12);
  if (r.find("n_inner")) sizes.d_ff = r.positive_int("n_inner", std::nullopt);
  ModelSpec s = family_spec("gpt2", sizes);
  const std::string act = r.string("activation_function", "gelu_new");
  LORA_INPUT_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh", r.path(),
                   ": \"activation_function\": \"", act,
                   "\" is not supported (expected gelu_new or gelu_pytorch_tanh: GELU, tanh form)");
  const double eps = r.number("layer_norm_epsilon", 1e-5);
  LORA_INPUT_CHECK(std::fabs(eps - 1e-5) <= 1e-12, r.path(), ": \"layer_norm_epsilon\": ", eps,
                   " is not supported (GPT-2's LayerNorm here uses 1e-5)");
  LORA_INPUT_CHECK(r.boolean("tie_word_embeddings", true), r.path(),
                   ": \"tie_word_embeddings\": false is not supported for GPT-2 (its LM head is the "
                   "token embedding)");
  LORA_INPUT_CHECK(r.boolean("scale_attn_weights", true), r.path(),
                   ": \"scale_attn_weights\": false is not supported (attention scores are scaled "
                   "by 1/sqrt(head_dim))");
  LORA_INPUT_CHECK(!r.boolean("scale_attn_by_inverse_layer_idx", false), r.path(),
                   ": \"scale_attn_by_inverse_layer_idx\": true is not supported");
  return s;
}

ModelSpec llama_spec_from_config(const ConfigReader& r, const std::string& type) {
  const bool qwen2 = type == "qwen2", mistral = type == "mistral";
  ModelSpec sizes;
  sizes.vocab_size = r.positive_int("vocab_size", qwen2 ? 151936 : 32000);
  sizes.d_model = r.positive_int("hidden_size", 4096);
  sizes.d_ff = r.positive_int("intermediate_size", qwen2 ? 22016 : (mistral ? 14336 : 11008));
  sizes.n_layer = r.positive_int("num_hidden_layers", 32);
  sizes.n_head = r.positive_int("num_attention_heads", 32);
  sizes.n_kv_head = r.positive_int("num_key_value_heads", mistral ? 8 : sizes.n_head);
  if (!qwen2 && r.find("head_dim")) sizes.head_dim = r.positive_int("head_dim", std::nullopt);
  sizes.max_seq_len =
      r.positive_int("max_position_embeddings", qwen2 ? 32768 : (mistral ? 131072 : 2048));
  ModelSpec s = family_spec(type, sizes);
  s.norm_eps = static_cast<float>(r.number("rms_norm_eps", 1e-6));
  s.rope_theta = static_cast<float>(r.number("rope_theta", 10000.0));
  s.tied_embeddings = r.boolean("tie_word_embeddings", false);
  if (type == "llama") {
    const bool attention_bias = r.boolean("attention_bias", false);
    s.qkv_bias = attention_bias;
    s.o_bias = attention_bias;
    s.mlp_bias = r.boolean("mlp_bias", false);
  }
  const std::string act = r.string("hidden_act", "silu");
  LORA_INPUT_CHECK(act == "silu", r.path(), ": \"hidden_act\": \"", act,
                   "\" is not supported (expected silu: the SwiGLU MLP)");
  if (mistral) {  // MistralConfig: 4096 when the key is absent, none when it is null
    if (!r.raw("sliding_window")) s.sliding_window = 4096;
    else if (r.find("sliding_window")) s.sliding_window = r.positive_int("sliding_window", std::nullopt);
  }
  if (qwen2 && r.boolean("use_sliding_window", false)) {
    s.sliding_window = r.positive_int("sliding_window", 4096);
  }
  if (const json::Value* rs = r.find("rope_scaling")) {
    LORA_INPUT_CHECK(rs->is_object(), r.path(), ": \"rope_scaling\": expected an object or null, got ",
                     json::dump(*rs));
    const ConfigReader sr(r.path() + " (rope_scaling)", *rs);
    const std::string rope_type = sr.string("rope_type", sr.string("type", "default"));
    if (rope_type == "llama3") {
      s.rope_scaling.llama3 = true;
      s.rope_scaling.factor = static_cast<float>(sr.number("factor", 8.0));
      s.rope_scaling.low_freq_factor = static_cast<float>(sr.number("low_freq_factor", 1.0));
      s.rope_scaling.high_freq_factor = static_cast<float>(sr.number("high_freq_factor", 4.0));
      s.rope_scaling.original_max_position_embeddings =
          sr.positive_int("original_max_position_embeddings", 8192);
    } else {
      LORA_INPUT_CHECK(rope_type == "default", r.path(), ": \"rope_scaling\": rope_type \"",
                       rope_type, "\" is not supported (expected llama3, or no scaling)");
    }
  }
  return s;
}

// The weight files of a model directory.
std::vector<std::string> find_weight_files(const fs::path& dir) {
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    const json::Value index = read_json_object(index_path.string());
    const json::Value* map = index.find("weight_map");
    LORA_INPUT_CHECK(map && map->is_object(), index_path.string(),
                     ": expected a \"weight_map\" object of tensor name -> shard file");
    std::vector<std::string> files;
    std::set<std::string> seen;
    for (const auto& [tensor, file] : map->as_object()) {
      LORA_INPUT_CHECK(file.is_string(), index_path.string(), ": weight_map[\"", tensor,
                       "\"]: expected a file name, got ", json::dump(file));
      const std::string& name = file.as_string();
      LORA_INPUT_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." &&
                           name != "..",
                       index_path.string(), ": weight_map[\"", tensor, "\"]: \"", name,
                       "\" is not a file name in the model directory");
      if (!seen.insert(name).second) continue;
      const fs::path shard = dir / name;
      LORA_INPUT_CHECK(fs::is_regular_file(shard, ec), index_path.string(),
                       ": names shard '", name, "' (for tensor '", tensor, "'), but ",
                       shard.string(), " does not exist");
      files.push_back(shard.string());
    }
    LORA_INPUT_CHECK(!files.empty(), index_path.string(), ": \"weight_map\" names no tensors");
    return files;
  }
  LORA_INPUT_CHECK(fs::is_regular_file(single, ec), dir.string(),
                   ": no model.safetensors or model.safetensors.index.json (weights are read from "
                   "safetensors files; convert pytorch_model.bin with transformers first)");
  return {single.string()};
}

constexpr std::string_view kGpt2Prefix = "transformer.";

// "h.12.attn.bias" -> (12, "attn.bias"); false for names not of the form <prefix>{i}.rest.
bool split_block_name(std::string_view name, std::string_view prefix, int* layer,
                      std::string_view* rest) {
  if (name.substr(0, prefix.size()) != prefix) return false;
  size_t i = prefix.size();
  int value = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') {
    if (value > (INT_MAX - 9) / 10) return false;
    value = value * 10 + (name[i] - '0');
    ++i;
  }
  if (i == prefix.size() || i >= name.size() || name[i] != '.') return false;
  if (i > prefix.size() + 1 && name[prefix.size()] == '0') return false;  // no leading zeros
  *layer = value;
  *rest = name.substr(i + 1);
  return true;
}

// Tensors a checkpoint may hold that the model does not take.
bool is_ignored_tensor(const ModelSpec& s, std::string_view name) {
  if (name == "lm_head.weight") return s.tied_embeddings;
  int layer = 0;
  std::string_view rest;
  if (s.is_gpt2())
    return split_block_name(name, "h.", &layer, &rest) &&
           (rest == "attn.bias" || rest == "attn.masked_bias");
  return split_block_name(name, "model.layers.", &layer, &rest) &&
         rest == "self_attn.rotary_emb.inv_freq";
}

// The tensors of several files under their names (GPT-2: without the "transformer." prefix).
struct WeightIndex {
  struct Entry {
    const SafetensorsFile* file;
    const SafetensorsTensor* tensor;
  };

  WeightIndex(const std::vector<std::string>& paths, bool gpt2) {
    LORA_INPUT_CHECK(!paths.empty(), "no weight files given");
    for (const std::string& path : paths) files.push_back(std::make_unique<SafetensorsFile>(path));
    for (const auto& file : files) {
      for (const auto& t : file->tensors()) {
        std::string_view name = t.name;
        if (gpt2 && name.substr(0, kGpt2Prefix.size()) == kGpt2Prefix)
          name.remove_prefix(kGpt2Prefix.size());
        const auto [it, inserted] = by_name.emplace(std::string(name), Entry{file.get(), &t});
        LORA_INPUT_CHECK(inserted, file->path(), ": tensor '", name, "' appears twice (as '",
                         it->second.tensor->name, "' in ", it->second.file->path(), " and '",
                         t.name, "')");
      }
    }
  }

  const Entry* find(const std::string& name) const {
    const auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : &it->second;
  }
  std::string where() const {
    return files.size() == 1 ? files[0]->path()
                             : fs::path(files[0]->path()).parent_path().string() + " (" +
                                   std::to_string(files.size()) + " shards)";
  }

  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::unordered_map<std::string, Entry> by_name;
};

int dim_as_int(const std::string& path, const SafetensorsTensor& t, size_t axis) {
  const int64_t d = t.shape[axis];
  LORA_INPUT_CHECK(d > 0 && d <= INT_MAX, path, ": tensor '", t.name, "': dimension ", axis,
                   " of shape ", shape_string(t.shape), " is not a positive int");
  return static_cast<int>(d);
}

ModelSpec infer_gpt2(const WeightIndex& index, int n_head) {
  const std::string path = index.where();
  ModelSpec s = family_spec("gpt2", ModelSpec{});
  const WeightIndex::Entry* wte = index.find("wte.weight");
  const WeightIndex::Entry* wpe = index.find("wpe.weight");
  LORA_INPUT_CHECK(wte, path, ": missing tensor 'wte.weight': not a GPT-2 weights file");
  LORA_INPUT_CHECK(wpe, path, ": missing tensor 'wpe.weight': not a GPT-2 weights file");
  const SafetensorsTensor& te = *wte->tensor;
  const SafetensorsTensor& pe = *wpe->tensor;
  LORA_INPUT_CHECK(te.shape.size() == 2, path, ": tensor '", te.name,
                   "': expected 2 dimensions [vocab_size, d_model], got ", shape_string(te.shape));
  LORA_INPUT_CHECK(pe.shape.size() == 2, path, ": tensor '", pe.name,
                   "': expected 2 dimensions [max_seq_len, d_model], got ", shape_string(pe.shape));
  s.vocab_size = dim_as_int(path, te, 0);
  s.d_model = dim_as_int(path, te, 1);
  s.max_seq_len = dim_as_int(path, pe, 0);
  LORA_INPUT_CHECK(pe.shape[1] == s.d_model, path, ": tensor '", pe.name, "': expected shape [",
                   s.max_seq_len, ", ", s.d_model, "] (d_model from '", te.name, "'), got ",
                   shape_string(pe.shape));
  int max_layer = -1;
  for (const auto& [name, entry] : index.by_name) {
    int layer = 0;
    std::string_view rest;
    if (split_block_name(name, "h.", &layer, &rest)) max_layer = std::max(max_layer, layer);
  }
  LORA_INPUT_CHECK(max_layer >= 0, path, ": no block tensors 'h.{i}.*': not a GPT-2 weights file");
  s.n_layer = max_layer + 1;
  if (const WeightIndex::Entry* fc = index.find("h.0.mlp.c_fc.weight")) {
    if (fc->tensor->shape.size() == 2 && fc->tensor->shape[1] > 0 &&
        fc->tensor->shape[1] != 4 * static_cast<int64_t>(s.d_model) &&
        fc->tensor->shape[1] <= INT_MAX)
      s.d_ff = static_cast<int>(fc->tensor->shape[1]);
  }
  s.n_head = n_head;
  for (const auto& file : index.files) {
    const auto it = file->metadata().find("n_head");
    if (it == file->metadata().end()) continue;
    int value = 0;
    const std::string& text = it->second;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    LORA_INPUT_CHECK(ec == std::errc() && ptr == text.data() + text.size() && value > 0,
                     file->path(), ": __metadata__ \"n_head\": expected a positive integer, got \"",
                     text, "\"");
    s.n_head = value;
  }
  return s;
}

void check_gpt2_shape(const WeightIndex& index, const ModelSpec& expected) {
  const ModelSpec got = infer_gpt2(index, 0);
  std::string diffs;
  auto compare = [&](const char* key, int want, int have) {
    if (want == have) return;
    if (!diffs.empty()) diffs += "; ";
    diffs += detail::concat("model.", key, ": config says ", want, ", weights file has ", have);
  };
  compare("vocab_size", expected.vocab_size, got.vocab_size);
  compare("max_seq_len", expected.max_seq_len, got.max_seq_len);
  compare("n_layer", expected.n_layer, got.n_layer);
  compare("d_model", expected.d_model, got.d_model);
  compare("d_ff", expected.ff(), got.ff());
  if (got.n_head > 0) compare("n_head", expected.n_head, got.n_head);
  LORA_INPUT_CHECK(diffs.empty(), index.where(), ": weights do not match the model config: ", diffs);
}

// Shortest decimal form of a float, as a double: 1e-6f is written 1e-06, not 9.99999997e-07.
double float_as_decimal(float f) {
  char buf[32];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, f);
  double d = 0.0;
  std::from_chars(buf, ptr, d);
  return d;
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

HfModelDir read_hf_model_dir(const std::string& dir) {
  std::error_code ec;
  LORA_INPUT_CHECK(fs::is_directory(dir, ec), "model.path: '", dir,
                   "' is not a directory (expected a Hugging Face model directory with config.json "
                   "and safetensors weights)");
  HfModelDir d;
  d.dir = dir;
  d.config_path = (fs::path(dir) / "config.json").string();
  LORA_INPUT_CHECK(fs::is_regular_file(d.config_path, ec), d.config_path,
                   ": missing (a Hugging Face model directory holds config.json)");
  d.config = read_json_object(d.config_path);
  const ConfigReader r(d.config_path, d.config);
  const json::Value* type = r.find("model_type");
  LORA_INPUT_CHECK(type && type->is_string(), d.config_path,
                   ": \"model_type\": expected one of ", known_archs(), ", got ",
                   type ? json::dump(*type) : std::string("nothing"));
  const std::string& t = type->as_string();
  LORA_INPUT_CHECK(is_known_arch(t), d.config_path, ": \"model_type\": \"", t,
                   "\" is not supported (expected one of: ", known_archs(), ")");
  d.spec = t == "gpt2" ? gpt2_spec_from_config(r) : llama_spec_from_config(r, t);
  validate_spec(d.spec, d.config_path);
  d.weight_files = find_weight_files(dir);
  return d;
}

void load_base_weights(const std::vector<std::string>& files, const BaseLayout& layout,
                       float* params) {
  LORA_CHECK(params != nullptr, "null parameter buffer");
  const ModelSpec& s = layout.spec();
  const WeightIndex index(files, s.is_gpt2());
  if (s.is_gpt2()) check_gpt2_shape(index, s);
  for (const TensorInfo& info : layout.tensors()) {
    const WeightIndex::Entry* e = index.find(info.name);
    LORA_INPUT_CHECK(e, index.where(), ": missing tensor '", info.name, "' (expected shape ",
                     shape_string(info.shape), ")");
    const SafetensorsTensor& t = *e->tensor;
    LORA_INPUT_CHECK(t.shape == info.shape, e->file->path(), ": tensor '", t.name,
                     "': expected shape ", shape_string(info.shape), ", got ",
                     shape_string(t.shape));
    LORA_INPUT_CHECK(t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16", e->file->path(),
                     ": tensor '", t.name, "': dtype ", t.dtype,
                     " is not supported (expected F32, F16 or BF16)");
  }
  for (const auto& [name, e] : index.by_name) {
    LORA_INPUT_CHECK(layout.find(name) || is_ignored_tensor(s, name), e.file->path(),
                     ": unexpected tensor '", e.tensor->name, "' (not part of a ", s.arch,
                     " model with n_layer=", s.n_layer,
                     s.tied_embeddings ? ", tied embeddings" : "", ")");
  }
  for (const TensorInfo& info : layout.tensors()) {
    const WeightIndex::Entry* e = index.find(info.name);
    e->file->read_f32(*e->tensor, params + info.offset);
  }
}

ModelSpec infer_gpt2_spec(const std::string& path, int n_head) {
  return infer_gpt2(WeightIndex({path}, true), n_head);
}

void check_gpt2_weights_shape(const std::string& path, const ModelSpec& expected) {
  check_gpt2_shape(WeightIndex({path}, true), expected);
}

void save_base_weights(const std::string& path, const BaseLayout& layout, const float* params,
                       const std::map<std::string, std::string>& metadata) {
  LORA_CHECK(params != nullptr, "null parameter buffer");
  const ModelSpec& s = layout.spec();
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"arch", s.arch},
      {"n_head", std::to_string(s.n_head)},
      {"n_kv_head", std::to_string(s.kv_heads())},
      {"n_layer", std::to_string(s.n_layer)},
      {"d_model", std::to_string(s.d_model)},
      {"d_ff", std::to_string(s.ff())},
      {"vocab_size", std::to_string(s.vocab_size)},
      {"max_seq_len", std::to_string(s.max_seq_len)},
  };
  for (const auto& [k, v] : metadata) meta[k] = v;
  std::vector<SafetensorsWriteTensor> tensors;
  tensors.reserve(layout.tensors().size());
  for (const TensorInfo& info : layout.tensors())
    tensors.push_back({info.name, info.shape, params + info.offset});
  write_safetensors(path, tensors, meta);
}

json::Value hf_config_for(const ModelSpec& s, const json::Value* source) {
  json::Value c = source && source->is_object() ? *source : json::Value::object();
  c.set("torch_dtype", "float32");
  if (s.is_gpt2()) {
    c.set("architectures", json::Array{json::Value("GPT2LMHeadModel")});
    c.set("model_type", "gpt2");
    c.set("vocab_size", s.vocab_size);
    c.set("n_positions", s.max_seq_len);
    c.set("n_embd", s.d_model);
    c.set("n_layer", s.n_layer);
    c.set("n_head", s.n_head);
    c.set("n_inner", s.ff() == 4 * s.d_model ? json::Value() : json::Value(s.ff()));
    c.set("activation_function", "gelu_new");
    c.set("layer_norm_epsilon", 1e-5);
    c.set("tie_word_embeddings", true);
    return c;
  }
  const char* arch = s.arch == "llama" ? "LlamaForCausalLM"
                     : s.arch == "qwen2" ? "Qwen2ForCausalLM"
                                         : "MistralForCausalLM";
  c.set("architectures", json::Array{json::Value(arch)});
  c.set("model_type", s.arch);
  c.set("vocab_size", s.vocab_size);
  c.set("hidden_size", s.d_model);
  c.set("intermediate_size", s.ff());
  c.set("num_hidden_layers", s.n_layer);
  c.set("num_attention_heads", s.n_head);
  c.set("num_key_value_heads", s.kv_heads());
  if (s.arch != "qwen2") c.set("head_dim", s.head_size());
  c.set("max_position_embeddings", s.max_seq_len);
  if (!source || !source->find("rms_norm_eps")) c.set("rms_norm_eps", float_as_decimal(s.norm_eps));
  if (!source || !source->find("rope_theta")) c.set("rope_theta", float_as_decimal(s.rope_theta));
  if (s.rope_scaling.llama3) {
    if (!source || !source->find("rope_scaling")) {
      json::Value rs = json::Value::object();
      rs.set("rope_type", "llama3");
      rs.set("factor", float_as_decimal(s.rope_scaling.factor));
      rs.set("low_freq_factor", float_as_decimal(s.rope_scaling.low_freq_factor));
      rs.set("high_freq_factor", float_as_decimal(s.rope_scaling.high_freq_factor));
      rs.set("original_max_position_embeddings", s.rope_scaling.original_max_position_embeddings);
      c.set("rope_scaling", rs);
    }
  } else {
    c.set("rope_scaling", json::Value());
  }
  c.set("tie_word_embeddings", s.tied_embeddings);
  c.set("hidden_act", "silu");
  if (s.arch == "llama") {
    c.set("attention_bias", s.qkv_bias);
    c.set("mlp_bias", s.mlp_bias);
  }
  if (s.arch == "mistral")
    c.set("sliding_window", s.sliding_window > 0 ? json::Value(s.sliding_window) : json::Value());
  if (s.arch == "qwen2") c.set("use_sliding_window", s.sliding_window > 0);
  return c;
}

namespace {

// `dir` without a trailing separator ("out/" -> "out").
fs::path clean_dir(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.has_parent_path() && p.filename().empty()) p = p.parent_path();
  return p;
}

// A fresh `dir`.tmp next to `dir`, for a directory written atomically.
fs::path begin_dir(const std::string& dir) {
  const fs::path tmp = clean_dir(dir).string() + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw Error(tmp.string() + ": cannot create directory: " + ec.message());
  return tmp;
}

void write_text_durably(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path, std::ios::trunc | std::ios::binary);
    out << text;
    out.close();
    if (!out) throw Error(path + ": cannot write");
  }
  fsync_path(path, false);
}

// Renames the finished `dir`.tmp onto `dir`; an existing `dir` is replaced only then.
void commit_dir(const std::string& dir) {
  const fs::path target = clean_dir(dir);
  const fs::path tmp = target.string() + ".tmp";
  const fs::path old = target.string() + ".old";
  std::error_code ec;
  fsync_path(tmp.string(), true);
  fs::remove_all(old, ec);
  const bool had_target = fs::exists(target, ec);
  if (had_target) {
    fs::rename(target, old, ec);
    if (ec) throw Error(target.string() + ": cannot move the previous directory aside: " + ec.message());
  }
  fs::rename(tmp, target, ec);
  if (ec) throw Error(target.string() + ": cannot rename " + tmp.string() + " into place: " + ec.message());
  if (had_target) fs::remove_all(old, ec);
  fsync_path(target.parent_path().empty() ? "." : target.parent_path().string(), true);
}

}  // namespace

void save_hf_model_dir(const std::string& dir, const BaseLayout& layout, const float* params,
                       const json::Value& config) {
  const fs::path tmp = begin_dir(dir);
  write_text_durably((tmp / "config.json").string(), json::dump(config) + "\n");
  save_base_weights((tmp / "model.safetensors").string(), layout, params);
  commit_dir(dir);
}

void save_hf_model_dir_like(const std::string& dir, const std::vector<std::string>& source_files,
                            const std::string& copy_from_dir, const BaseLayout& layout,
                            const float* params, const json::Value& config) {
  LORA_CHECK(params != nullptr, "null parameter buffer");
  const ModelSpec& s = layout.spec();
  const WeightIndex index(source_files, s.is_gpt2());
  for (const TensorInfo& info : layout.tensors())
    LORA_INPUT_CHECK(index.find(info.name), index.where(), ": missing tensor '", info.name, "'");
  const bool sharded = source_files.size() > 1 ||
                       (!copy_from_dir.empty() &&
                        fs::exists(fs::path(copy_from_dir) / "model.safetensors.index.json"));
  const fs::path tmp = begin_dir(dir);
  json::Value weight_map = json::Value::object();
  uint64_t total_bytes = 0;
  for (const auto& file : index.files) {
    const std::string name = sharded ? fs::path(file->path()).filename().string() : "model.safetensors";
    std::vector<SafetensorsWriteTensor> tensors;
    std::vector<std::vector<float>> copies;  // tensors the model does not take, written back as read
    copies.reserve(file->tensors().size());
    for (const SafetensorsTensor& t : file->tensors()) {
      std::string_view ours = t.name;
      if (s.is_gpt2() && ours.substr(0, kGpt2Prefix.size()) == kGpt2Prefix)
        ours.remove_prefix(kGpt2Prefix.size());
      LORA_INPUT_CHECK(t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16", file->path(),
                       ": tensor '", t.name, "': dtype ", t.dtype,
                       " cannot be written back (expected F32, F16 or BF16)");
      const float* data = nullptr;
      if (const TensorInfo* info = layout.find(std::string(ours))) {
        data = params + info->offset;
      } else {
        copies.emplace_back(t.numel());
        file->read_f32(t, copies.back().data());
        data = copies.back().data();
      }
      tensors.push_back({t.name, t.shape, data, t.dtype});
      weight_map.set(t.name, name);
      total_bytes += t.end - t.begin;
    }
    write_safetensors((tmp / name).string(), tensors, file->metadata());
  }
  if (sharded) {
    json::Value meta = json::Value::object();
    meta.set("total_size", total_bytes);
    json::Value idx = json::Value::object();
    idx.set("metadata", meta);
    idx.set("weight_map", weight_map);
    write_text_durably((tmp / "model.safetensors.index.json").string(), json::dump(idx) + "\n");
  }
  bool have_config = false;
  if (!copy_from_dir.empty()) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(copy_from_dir, ec)) {
      const std::string fname = entry.path().filename().string();
      const std::string ext = entry.path().extension().string();
      if (!entry.is_regular_file(ec) || fname == "model.safetensors.index.json") continue;
      if (ext != ".json" && ext != ".txt" && ext != ".model") continue;
      fs::copy_file(entry.path(), tmp / fname, fs::copy_options::overwrite_existing, ec);
      if (ec) throw Error(entry.path().string() + ": cannot copy into " + tmp.string() + ": " + ec.message());
      fsync_path((tmp / fname).string(), false);
      have_config = have_config || fname == "config.json";
    }
  }
  if (!have_config) write_text_durably((tmp / "config.json").string(), json::dump(config) + "\n");
  commit_dir(dir);
}

}  // namespace lora
