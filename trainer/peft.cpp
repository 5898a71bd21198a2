// PEFT adapter directories: reading (with PEFT's own matching rules), writing, `lora export`, and
// the adapter settings a config takes from an adapter (see peft.h).
#include "trainer/peft.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json.h"
#include "core/safetensors.h"

namespace lora {

namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
constexpr const char* kKeyPrefix = "base_model.model.";

// ---- small helpers ---------------------------------------------------------------------------

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LORA_INPUT_CHECK(in.is_open(), path, ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  LORA_INPUT_CHECK(!in.bad(), path, ": error while reading");
  return text.str();
}

// Shortest decimal form of a float, as a double: an alpha of 0.1f is written 0.1.
double float_as_decimal(float f) {
  char buf[32];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, f);
  double d = 0.0;
  std::from_chars(buf, ptr, d);
  return d;
}

// A float that is a whole number as a JSON integer (PEFT writes lora_alpha 16, not 16.0).
json::Value json_number(float f) {
  if (std::isfinite(f) && f == std::nearbyint(f) && std::fabs(f) < 1e15f)
    return json::Value(static_cast<int64_t>(f));
  return json::Value(float_as_decimal(f));
}

std::string number_text(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// JSON as Python's json.dumps(indent=2, sort_keys=True) lays it out, which is how PEFT writes
// adapter_config.json.
void pretty(const json::Value& v, int indent, std::string& out) {
  const std::string pad(static_cast<size_t>(indent) + 2, ' ');
  if (v.is_object() && v.size() > 0) {
    std::vector<const json::Member*> members;
    for (const json::Member& m : v.as_object()) members.push_back(&m);
    std::sort(members.begin(), members.end(),
              [](const json::Member* a, const json::Member* b) { return a->first < b->first; });
    out += "{\n";
    for (size_t i = 0; i < members.size(); ++i) {
      out += pad;
      json::append_quoted(out, members[i]->first);
      out += ": ";
      pretty(members[i]->second, indent + 2, out);
      out += i + 1 < members.size() ? ",\n" : "\n";
    }
    out += std::string(static_cast<size_t>(indent), ' ') + "}";
  } else if (v.is_array() && v.size() > 0) {
    out += "[\n";
    const json::Array& a = v.as_array();
    for (size_t i = 0; i < a.size(); ++i) {
      out += pad;
      pretty(a[i], indent + 2, out);
      out += i + 1 < a.size() ? ",\n" : "\n";
    }
    out += std::string(static_cast<size_t>(indent), ' ') + "]";
  } else {
    out += json::dump(v);
  }
}

// Python's re.escape for the characters module names hold: dots.
std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(".^$|?*+()[]{}\\").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

std::regex compile(const std::string& pattern, const std::string& where) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw InputError(where + ": '" + pattern +
                     "' is not a regular expression this reader understands (" + e.what() +
                     "; Python-only constructs such as (?P<name>...) are not supported)");
  }
}

std::string targets_text(const std::vector<LoraTarget>& targets, const ModelSpec& spec) {
  std::string out;
  for (LoraTarget t : family_targets(spec))
    if (std::find(targets.begin(), targets.end(), t) != targets.end())
      out += (out.empty() ? "" : ",") + std::string(lora_target_name(t, spec));
  return "[" + out + "]";
}

// ---- the modules of a transformers model that PEFT could target ------------------------------

struct Candidate {
  std::string key;     // PEFT's module name: "transformer.h.0.attn.c_attn"
  std::string module;  // ours: "h.0.attn.c_attn"; empty for modules we cannot adapt
  int layer = -1;
  LoraTarget target = LoraTarget::kAttnQkv;
  TargetGeometry geometry{};
};

std::vector<Candidate> candidates(const ModelSpec& spec) {
  std::vector<Candidate> out;
  const std::string block = spec.is_gpt2() ? "h." : "model.layers.";
  for (int l = 0; l < spec.n_layer; ++l) {
    for (LoraTarget t : family_targets(spec)) {
      Candidate c;
      c.module = block + std::to_string(l) + "." + std::string(lora_target_hf_name(t, spec));
      c.key = peft_module_name(c.module, spec);
      c.layer = l;
      c.target = t;
      c.geometry = lora_target_geometry(t, spec);
      out.push_back(std::move(c));
    }
  }
  // Modules PEFT can put adapters on that we cannot: the LM head and the embeddings.
  const std::vector<std::string> others =
      spec.is_gpt2() ? std::vector<std::string>{"lm_head", "transformer.wte", "transformer.wpe"}
                     : std::vector<std::string>{"lm_head", "model.embed_tokens"};
  for (const std::string& name : others) {
    Candidate c;
    c.key = name;
    out.push_back(std::move(c));
  }
  return out;
}

// ---- adapter_config.json fields --------------------------------------------------------------

// A value PEFT writes for a field that is not in use.
bool is_unset(const json::Value& v) {
  if (v.is_null()) return true;
  if (v.is_bool()) return !v.as_bool();
  if (v.is_array() || v.is_object()) return v.size() == 0;
  if (v.is_string()) return v.as_string().empty();
  return false;
}

class PeftConfigReader {
 public:
  PeftConfigReader(std::string path, const json::Value& obj) : path_(std::move(path)), obj_(obj) {}

  const json::Value* find(const char* key) const {
    used_.insert(key);
    return obj_.find(key);
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw InputError(path_ + ": \"" + key + "\": " + what);
  }
  // The field must be absent or unset; else `why` explains what it would do.
  void require_unset(const char* key, const std::string& why) const {
    const json::Value* v = find(key);
    if (v && !is_unset(*v)) fail(key, json::dump(*v) + " is not supported (" + why + ")");
  }
  bool boolean(const char* key, bool fallback) const {
    const json::Value* v = find(key);
    if (!v || v->is_null()) return fallback;
    if (!v->is_bool()) fail(key, "expected true or false, got " + json::dump(*v));
    return v->as_bool();
  }
  int positive_int(const char* key, std::optional<int> fallback) const {
    const json::Value* v = find(key);
    if (!v || v->is_null()) {
      if (!fallback) fail(key, "missing (expected a positive integer)");
      return *fallback;
    }
    if (!v->is_number() || v->as_double() != std::floor(v->as_double()) || v->as_double() < 1 ||
        v->as_double() > 1 << 30)
      fail(key, "expected a positive integer, got " + json::dump(*v));
    return static_cast<int>(v->as_double());
  }
  float positive_number(const char* key, float fallback) const {
    const json::Value* v = find(key);
    if (!v || v->is_null()) return fallback;
    if (!v->is_number() || !(v->as_double() > 0) || !std::isfinite(static_cast<float>(v->as_double())))
      fail(key, "expected a number > 0 (within float range), got " + json::dump(*v));
    return static_cast<float>(v->as_double());
  }
  // Every field nobody asked about must be unset: a feature of a newer PEFT we do not know, turned
  // on, would make the adapter compute something we do not.
  void check_unknown_fields() const {
    for (const auto& [key, value] : obj_.as_object()) {
      if (used_.count(key) || is_unset(value)) continue;
      fail(key, json::dump(value) + " is a field this reader does not know (expected it absent, "
                                    "null, false or empty)");
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const json::Value& obj_;
  mutable std::set<std::string> used_;
};

// PEFT's choice of modules: target_modules as one regular expression (re.fullmatch) or a list of
// names and suffixes.
class TargetMatcher {
 public:
  TargetMatcher(const json::Value& v, const PeftConfigReader& r) {
    if (v.is_string()) {
      all_linear_ = v.as_string() == "all-linear";
      if (!all_linear_) regex_ = compile(v.as_string(), r.path() + ": \"target_modules\"");
      return;
    }
    if (!v.is_array() || v.size() == 0)
      r.fail("target_modules", "expected a non-empty list of module names or a regular expression, got " +
                                   json::dump(v));
    for (const json::Value& s : v.as_array()) {
      if (!s.is_string() || s.as_string().empty())
        r.fail("target_modules", "expected module names (strings), got " + json::dump(s));
      names_.push_back(s.as_string());
    }
  }
  bool matches(const Candidate& c) const {
    if (all_linear_) return !c.module.empty();  // every linear layer but the LM head
    if (regex_) return std::regex_match(c.key, *regex_);
    for (const std::string& n : names_)
      if (c.key == n || (c.key.size() > n.size() && c.key.ends_with("." + n))) return true;
    return false;
  }

 private:
  bool all_linear_ = false;
  std::optional<std::regex> regex_;
  std::vector<std::string> names_;
};

struct Pattern {
  std::string key;
  std::regex re;  // re.match(".*\.<key>$")
};

std::vector<Pattern> read_patterns(const PeftConfigReader& r, const char* field,
                                   std::map<std::string, double>* values, bool integer) {
  std::vector<Pattern> out;
  const json::Value* v = r.find(field);
  if (!v || v->is_null()) return out;
  if (!v->is_object()) r.fail(field, "expected an object of module pattern -> value, got " + json::dump(*v));
  for (const auto& [key, value] : v->as_object()) {
    const bool ok = value.is_number() && value.as_double() > 0 &&
                    std::isfinite(static_cast<float>(value.as_double())) &&
                    (!integer || (value.as_double() == std::floor(value.as_double()) &&
                                  value.as_double() <= 1 << 30));
    if (!ok)
      r.fail(field, "\"" + key + "\": expected " +
                        (integer ? std::string("a positive integer rank") : std::string("a number > 0")) +
                        ", got " + json::dump(value));
    (*values)[key] = value.as_double();
    out.push_back({key, compile(".*\\." + key + "$", r.path() + ": \"" + field + "\" key")});
  }
  return out;
}

void check_finite(const float* p, size_t n, const std::string& where) {
  for (size_t i = 0; i < n; ++i)
    LORA_INPUT_CHECK(std::isfinite(p[i]), where, ": holds NaN or infinity (element ", i, ")");
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// The run's base model directory: model.path, or the directory of model.weights when it is a model
// directory. "" when the config names neither (a random base) or cannot be read.
std::string base_model_of(const std::string& config_yaml) {
  try {
    const YAML::Node root = YAML::Load(config_yaml);
    const YAML::Node model = root["model"];
    if (!model || !model.IsMap()) return "";
    if (model["path"] && model["path"].IsScalar() && !model["path"].Scalar().empty())
      return model["path"].Scalar();
    if (model["weights"] && model["weights"].IsScalar() && !model["weights"].Scalar().empty()) {
      const fs::path dir = fs::path(model["weights"].Scalar()).parent_path();
      std::error_code ec;
      if (fs::is_regular_file(dir / "config.json", ec)) return dir.string();
    }
  } catch (const YAML::Exception&) {
  }
  return "";
}

}  // namespace

std::string peft_module_name(const std::string& module, const ModelSpec& spec) {
  return spec.is_gpt2() ? "transformer." + module : module;
}

bool is_adapter_dir(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

// ---- reading ---------------------------------------------------------------------------------

Adapter read_peft_adapter(const std::string& dir, const ModelSpec& spec) {
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  std::error_code ec;
  LORA_INPUT_CHECK(fs::is_regular_file(config_path, ec), dir, ": not a PEFT adapter directory (no ",
                   kConfigFile, ")");
  if (!fs::is_regular_file(weights_path, ec)) {
    const bool pickled = fs::exists(fs::path(dir) / "adapter_model.bin", ec);
    throw InputError(weights_path + ": missing" +
                     (pickled ? std::string(" (adapter_model.bin, a pickle, is not read: save the "
                                            "adapter with safe_serialization=True)")
                              : std::string(" (a PEFT adapter directory holds ") + kWeightsFile + ")"));
  }
  json::Value root;
  try {
    root = json::parse(read_text(config_path));
  } catch (const json::ParseError& e) {
    throw InputError(config_path + ": invalid JSON: " + e.what());
  }
  LORA_INPUT_CHECK(root.is_object(), config_path, ": expected a JSON object, got ",
                   json::type_name(root.type()));
  const PeftConfigReader r(config_path, root);

  // What kind of adapter.
  const json::Value* type = r.find("peft_type");
  if (!type || !type->is_string() || type->as_string() != "LORA")
    r.fail("peft_type", (type ? json::dump(*type) : std::string("missing")) +
                            ": expected \"LORA\" (only LoRA adapters are read)");
  if (const json::Value* task = r.find("task_type"); task && !task->is_null()) {
    if (!task->is_string() || task->as_string() != "CAUSAL_LM")
      r.fail("task_type", json::dump(*task) + " is not supported (expected \"CAUSAL_LM\": other "
                                               "tasks add heads this model does not have)");
  }
  r.require_unset("use_dora", "DoRA rescales each weight's magnitude; only plain LoRA is computed");
  r.require_unset("lora_bias", "a trained bias on lora_B is not computed");
  r.require_unset("modules_to_save", "fully trained extra modules are not loaded");
  r.require_unset("layers_to_transform", "adapters on a subset of the layers are not supported");
  r.require_unset("layer_replication", "replicated layers change the model");
  r.require_unset("megatron_config", "Megatron parallel layers are not supported");
  r.require_unset("loftq_config", "LoftQ changes the base weights");
  r.require_unset("use_qalora", "QALoRA is not supported");
  r.require_unset("trainable_token_indices", "trained token embeddings are not loaded");
  r.require_unset("target_parameters", "adapters on parameters rather than modules are not supported");
  r.require_unset("exclude_modules", "excluding modules is not supported");
  if (const json::Value* bias = r.find("bias"); bias && !bias->is_null()) {
    if (!bias->is_string() || bias->as_string() != "none")
      r.fail("bias", json::dump(*bias) + " is not supported (expected \"none\": trained biases are "
                                          "not loaded)");
  }
  if (const json::Value* init = r.find("init_lora_weights"); init && !init->is_null()) {
    const bool ok = init->is_bool() ||
                    (init->is_string() && (init->as_string() == "gaussian" || init->as_string() == "eva"));
    if (!ok)
      r.fail("init_lora_weights", json::dump(*init) + " is not supported (this initialisation changes "
                                                      "the base weights; expected true, false, "
                                                      "\"gaussian\" or \"eva\")");
  }
  // Read and ignored: they do not change what the adapter computes at inference.
  for (const char* key : {"base_model_name_or_path", "revision", "auto_mapping", "inference_mode",
                          "lora_dropout", "fan_in_fan_out", "megatron_core", "layers_pattern",
                          "peft_version", "eva_config", "corda_config", "runtime_config",
                          "qalora_group_size"})
    r.find(key);

  Adapter a;
  a.path = dir;
  a.peft = true;
  if (const json::Value* b = r.find("base_model_name_or_path"); b && b->is_string())
    a.base_model = b->as_string();
  LoraSpec& l = a.lora;
  l.rank = r.positive_int("r", 8);
  l.alpha = r.positive_number("lora_alpha", 8.0f);
  l.rslora = r.boolean("use_rslora", false);
  if (const json::Value* d = r.find("lora_dropout"); d && d->is_number()) {
    const double p = d->as_double();
    if (p >= 0 && p < 1) l.dropout = static_cast<float>(p);
  }
  const json::Value* tm = r.find("target_modules");
  if (!tm || tm->is_null()) r.fail("target_modules", "missing (expected the adapted modules)");
  const TargetMatcher matcher(*tm, r);
  std::map<std::string, double> ranks, alphas;
  const std::vector<Pattern> rank_patterns = read_patterns(r, "rank_pattern", &ranks, true);
  const std::vector<Pattern> alpha_patterns = read_patterns(r, "alpha_pattern", &alphas, false);
  r.check_unknown_fields();

  // The modules target_modules selects, and each one's rank and alpha.
  std::vector<const Candidate*> chosen;
  const std::vector<Candidate> all = candidates(spec);
  std::map<LoraTarget, std::vector<int>> layers_of;
  for (const Candidate& c : all) {
    if (!matcher.matches(c)) continue;
    if (c.module.empty())
      r.fail("target_modules", "selects '" + c.key + "', which is not supported (adapters on the LM "
                               "head or the embeddings)");
    chosen.push_back(&c);
    layers_of[c.target].push_back(c.layer);
  }
  if (chosen.empty())
    r.fail("target_modules", json::dump(*tm) + " selects no module of this " + spec.arch +
                                 " model (its linears are named like '" + all.front().key + "')");
  for (const auto& [target, layers] : layers_of) {
    if (static_cast<int>(layers.size()) == spec.n_layer) continue;
    std::string list;
    for (int x : layers) list += (list.empty() ? "" : ",") + std::to_string(x);
    r.fail("target_modules", "selects " + std::string(lora_target_name(target, spec)) + " in layers [" +
                                 list + "] of " + std::to_string(spec.n_layer) +
                                 ": adapters on a subset of the layers are not supported");
  }
  l.targets.clear();
  for (LoraTarget t : family_targets(spec))
    if (layers_of.count(t)) l.targets.push_back(t);
  // PEFT up to 0.13 takes the first key matching the module among rank_pattern's then
  // alpha_pattern's keys and looks both the rank and the alpha up under it; later versions look the
  // rank up under the first matching rank_pattern key and the alpha under the first matching
  // alpha_pattern key. Where the two rules disagree the adapter is ambiguous and refused.
  auto first_match = [&](const std::vector<Pattern>& patterns, const std::string& key) -> const Pattern* {
    for (const Pattern& p : patterns)
      if (std::regex_search(key, p.re, std::regex_constants::match_continuous)) return &p;
    return nullptr;
  };
  auto lookup = [](const std::map<std::string, double>& m, const Pattern* p, double fallback) {
    if (!p) return fallback;
    const auto it = m.find(p->key);
    return it == m.end() ? fallback : it->second;
  };
  for (const Candidate* c : chosen) {
    const Pattern* rank_key = first_match(rank_patterns, c->key);
    const Pattern* alpha_key = first_match(alpha_patterns, c->key);
    const int rank = static_cast<int>(lookup(ranks, rank_key, l.rank));
    const float alpha = static_cast<float>(lookup(alphas, alpha_key, l.alpha));
    const Pattern* either = rank_key ? rank_key : alpha_key;
    const int old_rank = static_cast<int>(lookup(ranks, either, l.rank));
    const float old_alpha = static_cast<float>(lookup(alphas, either, l.alpha));
    if (rank != old_rank || alpha != old_alpha)
      r.fail(alpha_key ? "alpha_pattern" : "rank_pattern",
             "module '" + c->key + "' matches rank_pattern key '" + (rank_key ? rank_key->key : "") +
                 "' and alpha_pattern key '" + (alpha_key ? alpha_key->key : "") +
                 "': PEFT up to 0.13 gives it rank " + std::to_string(old_rank) + " and alpha " +
                 number_text(old_alpha) + ", later versions rank " + std::to_string(rank) +
                 " and alpha " + number_text(alpha) + " (ambiguous: use one key for both)");
    if (rank != l.rank || alpha != l.alpha) l.module_settings[c->module] = {rank, alpha};
  }
  std::unique_ptr<LoraLayout> layout;
  try {
    layout = std::make_unique<LoraLayout>(spec, l);
  } catch (const InputError& e) {
    throw InputError(config_path + ": " + e.what());
  }

  // The tensors: exactly lora_A and lora_B of every chosen module.
  const SafetensorsFile file(weights_path);
  std::map<std::string, std::pair<const LoraModule*, bool>> expected;  // key -> (module, is A)
  for (const LoraModule& m : layout->modules()) {
    const std::string key = kKeyPrefix + peft_module_name(m.name, spec);
    expected[key + ".lora_A.weight"] = {&m, true};
    expected[key + ".lora_B.weight"] = {&m, false};
  }
  for (const SafetensorsTensor& t : file.tensors()) {
    if (expected.count(t.name)) continue;
    std::string why = "not an adapter of a module the target_modules of " + config_path + " selects";
    if (t.name.find("lora_magnitude_vector") != std::string::npos) why = "a DoRA magnitude vector";
    else if (t.name.find("lora_embedding") != std::string::npos) why = "an embedding adapter";
    else if (t.name.find("modules_to_save") != std::string::npos) why = "a module to save";
    else if (t.name.ends_with(".bias")) why = "a bias";
    else if (t.name.find(".lora_A.") != std::string::npos || t.name.find(".lora_B.") != std::string::npos)
      if (t.name.find(kKeyPrefix) != 0) why = "expected names starting with base_model.model.";
    throw InputError(weights_path + ": unexpected tensor '" + t.name + "' (" + why +
                     "; only lora_A/lora_B weights are read)");
  }
  a.params.assign(layout->n_params(), 0.0f);
  std::vector<float> buf;
  for (const auto& [name, entry] : expected) {
    const auto [m, is_a] = entry;
    const SafetensorsTensor* t = file.find(name);
    LORA_INPUT_CHECK(t, weights_path, ": missing tensor '", name, "' (", m->name, " is selected by ",
                     "the target_modules of ", config_path, ")");
    const std::vector<int64_t> want = is_a ? std::vector<int64_t>{m->rank, m->d_in}
                                           : std::vector<int64_t>{m->d_out, m->rank};
    LORA_INPUT_CHECK(t->shape == want, weights_path, ": tensor '", name, "': expected shape ",
                     shape_string(want), " (", is_a ? "[r, d_in]" : "[d_out, r]", " with r = ",
                     m->rank, " as ", config_path, " says), got ", shape_string(t->shape));
    LORA_INPUT_CHECK(t->dtype == "F32" || t->dtype == "F16" || t->dtype == "BF16", weights_path,
                     ": tensor '", name, "': dtype ", t->dtype, " is not supported (expected F32, F16 or BF16)");
    buf.resize(t->numel());
    file.read_f32(*t, buf.data());
    check_finite(buf.data(), buf.size(), weights_path + ": tensor '" + name + "'");
    float* dst = a.params.data() + (is_a ? m->a_offset : m->b_offset);
    const int rows = static_cast<int>(want[0]), cols = static_cast<int>(want[1]);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) dst[static_cast<size_t>(j) * rows + i] = buf[static_cast<size_t>(i) * cols + j];
  }
  return a;
}

Adapter adapter_from_checkpoint(std::shared_ptr<const CheckpointState> ckpt, const std::string& path,
                                const ModelSpec& spec) {
  LORA_INPUT_CHECK(ckpt->mode == TrainMode::kLora, path,
                   ": a full-mode checkpoint holds a whole model, not LoRA adapters");
  LORA_INPUT_CHECK(ckpt->spec.arch == spec.arch && describe_spec(ckpt->spec) == describe_spec(spec) &&
                       ckpt->spec.max_seq_len == spec.max_seq_len,
                   path, ": the adapters were trained on '", describe_spec(ckpt->spec),
                   "' (max_seq_len ", ckpt->spec.max_seq_len, "), but the config's model is '",
                   describe_spec(spec), "' (max_seq_len ", spec.max_seq_len, ")");
  Adapter a;
  a.path = path;
  a.lora = ckpt->lora;
  a.params = ckpt->params;
  a.checkpoint = std::move(ckpt);
  return a;
}

Adapter read_adapter(const std::string& path, const ModelSpec& spec, const std::string& what) {
  std::error_code ec;
  LORA_INPUT_CHECK(fs::exists(path, ec), what, ": '", path,
                   "' does not exist (expected a checkpoint file or a PEFT adapter directory)");
  if (is_adapter_dir(path)) return read_peft_adapter(path, spec);
  return adapter_from_checkpoint(std::make_shared<const CheckpointState>(read_checkpoint(path)), path,
                                 spec);
}

Config config_for_adapter(const Config& cfg, const Adapter& adapter, const std::string& what) {
  LORA_INPUT_CHECK(cfg.train.mode == TrainMode::kLora, cfg.source_path,
                   ": train.mode: full, but ", what, " ", adapter.path,
                   " holds LoRA adapters (expected train.mode lora)");
  const ModelSpec& spec = cfg.model.spec;
  const LoraSpec& a = adapter.lora;
  auto contradict = [&](const char* key, const std::string& config_value,
                        const std::string& adapter_value) {
    if (!cfg.given_keys.count(key) || config_value == adapter_value) return;
    throw InputError(cfg.source_path + ": " + key + ": the config gives " + config_value + ", but " +
                     what + " " + adapter.path + " has " + adapter_value + " (leave " + key +
                     " out: the adapter's settings are used)");
  };
  contradict("lora.rank", std::to_string(cfg.lora.rank), std::to_string(a.rank));
  contradict("lora.alpha", number_text(cfg.lora.alpha), number_text(a.alpha));
  contradict("lora.rslora", cfg.lora.rslora ? "true" : "false", a.rslora ? "true" : "false");
  contradict("lora.targets", targets_text(cfg.lora.targets, spec), targets_text(a.targets, spec));
  Config out = cfg;
  out.lora.rank = a.rank;
  out.lora.alpha = a.alpha;
  out.lora.rslora = a.rslora;
  out.lora.targets = a.targets;
  out.lora.module_settings = a.module_settings;
  out.resolved_yaml = resolved_config_yaml(out);
  return out;
}

// ---- writing ---------------------------------------------------------------------------------

void write_peft_adapter(const std::string& out_dir, const ModelSpec& spec, const LoraSpec& lora,
                        const float* params, const std::string& base_model) {
  const LoraLayout layout(spec, lora);
  fs::path target = fs::path(out_dir).lexically_normal();
  if (target.has_parent_path() && target.filename().empty()) target = target.parent_path();
  std::error_code ec;
  if (fs::exists(target, ec)) {
    const bool replaceable = fs::is_directory(target, ec) &&
                             (fs::is_empty(target, ec) || fs::exists(target / kConfigFile, ec));
    LORA_INPUT_CHECK(replaceable, out_dir,
                     ": exists and is not a PEFT adapter directory (refusing to replace it)");
  }

  // target_modules: the suffixes PEFT matches, one per adapted target. GPT-2's "c_proj" names
  // both projections, so it is written qualified unless both are adapted.
  std::set<std::string> modules;
  for (LoraTarget t : lora.targets) {
    std::string name(lora_target_hf_name(t, spec));  // "attn.c_attn", "self_attn.q_proj"
    std::string last = name.substr(name.rfind('.') + 1);
    if (spec.is_gpt2() && last == "c_proj" &&
        !(lora.has_target(LoraTarget::kAttnProj) && lora.has_target(LoraTarget::kMlpProj)))
      modules.insert(name);
    else
      modules.insert(last);
  }
  json::Value target_modules = json::Value::array();
  for (const std::string& m : modules) target_modules.push_back(m);

  // rank_pattern / alpha_pattern: one exact key per module whose rank or alpha differs. PEFT
  // matches a key k with re.match(".*\.k$") on its module name, so the key is our module path
  // below the top-level prefix ("layers.3.self_attn.q_proj"; GPT-2's "h.3.attn.c_attn" follows
  // "transformer."), dots escaped.
  json::Value rank_pattern = json::Value::object(), alpha_pattern = json::Value::object();
  for (const LoraModule& m : layout.modules()) {
    if (m.rank == lora.rank && m.alpha == lora.alpha) continue;
    const std::string rest = spec.is_gpt2() ? m.name : m.name.substr(m.name.find('.') + 1);
    const std::string key = regex_escape(rest);
    if (m.rank != lora.rank) rank_pattern.set(key, m.rank);
    if (m.alpha != lora.alpha) alpha_pattern.set(key, json_number(m.alpha));
  }

  json::Value c = json::Value::object();
  c.set("alpha_pattern", alpha_pattern);
  c.set("auto_mapping", json::Value());
  c.set("base_model_name_or_path", base_model.empty() ? json::Value() : json::Value(base_model));
  c.set("bias", "none");
  c.set("fan_in_fan_out", spec.conv1d);
  c.set("inference_mode", true);
  c.set("init_lora_weights", true);
  c.set("layer_replication", json::Value());
  c.set("layers_pattern", json::Value());
  c.set("layers_to_transform", json::Value());
  c.set("loftq_config", json::Value::object());
  c.set("lora_alpha", json_number(lora.alpha));
  c.set("lora_dropout", float_as_decimal(lora.dropout));
  c.set("megatron_config", json::Value());
  c.set("megatron_core", "megatron.core");
  c.set("modules_to_save", json::Value());
  c.set("peft_type", "LORA");
  c.set("r", lora.rank);
  c.set("rank_pattern", rank_pattern);
  c.set("revision", json::Value());
  c.set("target_modules", target_modules);
  c.set("task_type", "CAUSAL_LM");
  c.set("use_dora", false);
  c.set("use_rslora", lora.rslora);
  std::string text;
  pretty(c, 0, text);

  // lora_A.weight = A^T [r, d_in], lora_B.weight = B^T [r, d_out]^T = [d_out, r].
  std::vector<std::vector<float>> store;
  store.reserve(layout.modules().size() * 2);
  std::vector<SafetensorsWriteTensor> tensors;
  for (const LoraModule& m : layout.modules()) {
    const std::string key = kKeyPrefix + peft_module_name(m.name, spec);
    const float* a = params + m.a_offset;
    const float* b = params + m.b_offset;
    std::vector<float>& at = store.emplace_back(m.n_a());
    for (int i = 0; i < m.d_in; ++i)
      for (int k = 0; k < m.rank; ++k) at[static_cast<size_t>(k) * m.d_in + i] = a[static_cast<size_t>(i) * m.rank + k];
    std::vector<float>& bt = store.emplace_back(m.n_b());
    for (int k = 0; k < m.rank; ++k)
      for (int j = 0; j < m.d_out; ++j) bt[static_cast<size_t>(j) * m.rank + k] = b[static_cast<size_t>(k) * m.d_out + j];
    tensors.push_back({key + ".lora_A.weight", {m.rank, m.d_in}, at.data()});
    tensors.push_back({key + ".lora_B.weight", {m.d_out, m.rank}, bt.data()});
  }

  const fs::path tmp = target.string() + ".tmp";
  const fs::path old = target.string() + ".old";
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw Error(tmp.string() + ": cannot create directory: " + ec.message());
  const std::string config_path = (tmp / kConfigFile).string();
  {
    std::ofstream out(config_path, std::ios::trunc | std::ios::binary);
    out << text;
    out.close();
    if (!out) throw Error(config_path + ": cannot write");
  }
  fsync_path(config_path, false);
  write_safetensors((tmp / kWeightsFile).string(), tensors, {{"format", "pt"}});
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

std::string export_peft(const std::string& checkpoint_path, const std::string& out_dir) {
  const CheckpointState c = read_checkpoint(checkpoint_path);
  LORA_INPUT_CHECK(c.mode == TrainMode::kLora, checkpoint_path,
                   ": a full-mode checkpoint holds a whole model, not LoRA adapters: PEFT cannot "
                   "express it (the run's output directory is already a Hugging Face model directory)");
  const LoraLayout layout(c.spec, c.lora);
  for (const LoraModule& m : layout.modules()) {
    check_finite(c.params.data() + m.a_offset, m.n_a(), checkpoint_path + ": adapter " + m.name + "/A");
    check_finite(c.params.data() + m.b_offset, m.n_b(), checkpoint_path + ": adapter " + m.name + "/B");
  }
  const std::string base = base_model_of(c.config_yaml);
  write_peft_adapter(out_dir, c.spec, c.lora, c.params.data(), base);
  std::ostringstream os;
  os << "lora: exported " << layout.modules().size() << " adapters (r " << c.lora.rank << ", alpha "
     << c.lora.alpha << (c.lora.rslora ? ", rsLoRA" : "") << ", step " << c.step << ") to " << out_dir
     << " | base_model_name_or_path " << (base.empty() ? "null (the run had no model directory)" : base);
  return os.str();
}

}  // namespace lora
