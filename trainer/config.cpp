// Config loading: YAML text -> overrides -> schema check -> typed Config -> range checks -> files.
//
// The YAML tree is first flattened into leaves keyed by their dotted path ("train.steps",
// "lora.init.a"), each with the node holding its value and where that value came from
// ("FILE:LINE" or "--set key=value"). Every key is checked against the schema while flattening, so
// an unknown key is reported at its own line. `--set` overrides replace leaves of that table. The
// typed values are then read from the leaves with strict conversions (an integer key rejects 1.5,
// "abc", a list, a quoted "5"), checked against their ranges and against each other, and data and
// weights paths are resolved against the config file's directory and made absolute.
//
// Message formats (the CLI prints them as they are):
//   FILE:LINE: unknown key 'train.stepz' (expected one of: mode, micro_batch, ...)
//   FILE:LINE: train.steps: expected an integer, got 'abc'
//   FILE:LINE: lora.dropout: expected a number in [0, 1), got 1.5
//   --set train.steps=abc: train.steps: expected an integer, got 'abc'
// A value left at its default has no line; a check on it names the file only.
#include "trainer/config.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "core/model/hf_model.h"
#include "core/model/lora_layout.h"

namespace lora {

namespace fs = std::filesystem;

namespace {

// Every leaf key of the schema, in the order resolved_yaml writes them. A dotted prefix of a leaf
// ("train", "lora.init") is a section that holds a mapping.
constexpr const char* kLeafKeys[] = {
    "run.name",          "run.output_dir",     "run.seed",
    "model.path",        "model.arch",         "model.weights",
    "model.vocab_size",  "model.n_layer",      "model.n_head",
    "model.n_kv_head",   "model.d_model",      "model.d_ff",
    "model.max_seq_len", "model.rope_theta",   "model.tie_embeddings",
    "model.dtype",       "lora.rank",
    "lora.alpha",        "lora.dropout",       "lora.rslora",
    "lora.targets",      "lora.init.a",        "lora.init.b",
    "lora.init_from",
    "data.train",        "data.val",           "data.format",
    "data.seq_len",      "data.tokenizer",     "data.template",
    "data.mask_prompt",  "data.pack",
    "train.mode",        "train.micro_batch",
    "train.grad_accum",  "train.steps",        "train.lr",
    "train.warmup_steps", "train.schedule",    "train.min_lr",
    "train.weight_decay", "train.grad_clip",   "train.eval_every",
    "train.eval_batches", "train.log_every",   "checkpoint.dir",
    "checkpoint.every",  "checkpoint.keep",    "device.backend",
    "device.threads",    "comm.backend",       "comm.bucket_mb",
    "comm.overlap",      "comm.timeout_s",
};

bool is_leaf(const std::string& path) {
  return std::any_of(std::begin(kLeafKeys), std::end(kLeafKeys),
                     [&](const char* k) { return path == k; });
}

bool is_section(const std::string& path) {
  if (path.empty()) return true;
  const std::string prefix = path + ".";
  return std::any_of(std::begin(kLeafKeys), std::end(kLeafKeys),
                     [&](const char* k) { return std::string_view(k).starts_with(prefix); });
}

// The keys directly under a section, in schema order: "run, model, lora, ..." for the root.
std::string children_of(const std::string& section) {
  const std::string prefix = section.empty() ? "" : section + ".";
  std::vector<std::string> names;
  for (const char* k : kLeafKeys) {
    std::string_view key(k);
    if (!key.starts_with(prefix)) continue;
    std::string_view rest = key.substr(prefix.size());
    std::string name(rest.substr(0, rest.find('.')));
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

std::string join_path(const std::string& section, const std::string& key) {
  return section.empty() ? key : section + "." + key;
}

// Where a value came from: "FILE:LINE" for the file, "--set key=value" for an override.
struct Leaf {
  YAML::Node node;
  std::string where;
};

std::string file_line(const std::string& source, const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return source;
  return source + ":" + std::to_string(mark.line + 1);
}

// A short description of a node for "got ..." in messages.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar:
      if (node.Tag() == "!") return "the quoted string '" + node.Scalar() + "'";
      return "'" + node.Scalar() + "'";
    default: return "an undefined value";
  }
}

class LeafTable {
 public:
  explicit LeafTable(std::string source) : source_(std::move(source)) {}

  const std::string& source() const { return source_; }

  // Adds the keys of `map` (the contents of `section`) from the config file.
  void add_file_map(const YAML::Node& map, const std::string& section, const YAML::Mark& at) {
    if (map.IsNull()) return;  // "lora:" with nothing under it: all defaults
    if (!map.IsMap()) {
      throw InputError(detail::concat(file_line(source_, map.Mark().is_null() ? at : map.Mark()),
                                      ": ", section.empty() ? "config" : section,
                                      ": expected a mapping of keys, got ", describe(map)));
    }
    std::map<std::string, int> seen;  // key -> line (1-based)
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;  // copies: the iterator's pair is a temporary
      const YAML::Node value = it->second;
      const std::string key_where = file_line(source_, key.Mark());
      if (!key.IsScalar()) {
        throw InputError(detail::concat(key_where, ": expected a plain key name, got ",
                                        describe(key)));
      }
      const std::string path = join_path(section, key.Scalar());
      auto [pos, inserted] = seen.emplace(key.Scalar(), key.Mark().line + 1);
      if (!inserted) {
        throw InputError(detail::concat(key_where, ": duplicate key '", path,
                                        "' (first given at line ", pos->second, ")"));
      }
      if (is_leaf(path)) {
        // An empty value ("steps:") has its mark on the next line: report the key's line then.
        const YAML::Mark& mark = value.IsNull() ? key.Mark() : value.Mark();
        leaves_[path] = Leaf{value, file_line(source_, mark)};
      } else if (is_section(path)) {
        add_file_map(value, path, key.Mark());
      } else {
        throw InputError(detail::concat(key_where, ": unknown key '", path,
                                        "' (expected one of: ", children_of(section), ")"));
      }
    }
  }

  // Applies one "key.path=value" override.
  void add_override(const std::string& text) {
    const std::string where = "--set " + text;
    const size_t eq = text.find('=');
    const std::string path = eq == std::string::npos ? "" : text.substr(0, eq);
    const bool well_formed = !path.empty() && path.front() != '.' && path.back() != '.' &&
                             path.find("..") == std::string::npos &&
                             path.find_first_of(" \t") == std::string::npos;
    if (!well_formed) {
      throw InputError(detail::concat(where, ": expected key.path=value (for example ",
                                      "train.steps=500)"));
    }
    if (!is_leaf(path) && !is_section(path)) {
      // Name the deepest known section the path starts with, and what it holds.
      std::string section;
      size_t dot = 0;
      while ((dot = path.find('.', dot)) != std::string::npos) {
        const std::string head = path.substr(0, dot++);
        if (!is_section(head)) break;
        section = head;
      }
      throw InputError(detail::concat(where, ": unknown key '", path,
                                      "' (expected one of: ", children_of(section), ")"));
    }
    YAML::Node value;
    try {
      value = YAML::Load(text.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw InputError(detail::concat(where, ": the value is not valid YAML: ", e.msg));
    }
    if (is_leaf(path)) {
      leaves_[path] = Leaf{value, where};
      return;
    }
    if (!value.IsMap()) {
      throw InputError(detail::concat(where, ": ", path, " is a section: expected a mapping like {",
                                      children_of(path).substr(0, children_of(path).find(',')),
                                      ": ...}, got ", describe(value)));
    }
    add_override_map(value, path, where);
  }

  const Leaf* find(const std::string& path) const {
    auto it = leaves_.find(path);
    return it == leaves_.end() ? nullptr : &it->second;
  }
  std::set<std::string> given_keys() const {
    std::set<std::string> keys;
    for (const auto& [path, leaf] : leaves_) keys.insert(path);
    return keys;
  }

  // Where a key's value came from, or the file alone when the key was left at its default.
  std::string where(const std::string& path) const {
    const Leaf* leaf = find(path);
    return leaf ? leaf->where : source_;
  }

 private:
  void add_override_map(const YAML::Node& map, const std::string& section, const std::string& where) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      const YAML::Node value = it->second;
      if (!key.IsScalar()) {
        throw InputError(detail::concat(where, ": expected a plain key name, got ", describe(key)));
      }
      const std::string path = join_path(section, key.Scalar());
      if (is_leaf(path)) {
        leaves_[path] = Leaf{value, where};
      } else if (is_section(path)) {
        if (value.IsNull()) continue;
        if (!value.IsMap()) {
          throw InputError(detail::concat(where, ": ", path, ": expected a mapping of keys, got ",
                                          describe(value)));
        }
        add_override_map(value, path, where);
      } else {
        throw InputError(detail::concat(where, ": unknown key '", path,
                                        "' (expected one of: ", children_of(section), ")"));
      }
    }
  }

  std::string source_;
  std::map<std::string, Leaf> leaves_;
};

// ---- strict scalar conversions -------------------------------------------------------------

[[noreturn]] void type_error(const Leaf& leaf, const std::string& key, const char* expected) {
  throw InputError(detail::concat(leaf.where, ": ", key, ": expected ", expected, ", got ",
                                  describe(leaf.node)));
}

// A plain (unquoted) scalar's text, or a type error naming `expected`.
const std::string& plain_scalar(const Leaf& leaf, const std::string& key, const char* expected) {
  if (!leaf.node.IsScalar() || leaf.node.Tag() == "!") type_error(leaf, key, expected);
  return leaf.node.Scalar();
}

template <typename T>
bool parse_number(std::string_view text, T* out) {
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text.empty()) return false;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  if (ec != std::errc() || ptr != end) return false;
  if constexpr (std::is_floating_point_v<T>) return std::isfinite(*out);
  return true;
}

// Formats a value for messages and for resolved_yaml: the shortest text that reads back exactly.
template <typename T>
std::string number_text(T v) {
  char buf[64];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, ptr) : std::string("?");
}

class Reader {
 public:
  explicit Reader(const LeafTable& table) : table_(table) {}

  std::string where(const std::string& key) const { return table_.where(key); }

  long long get_integer(const std::string& key, long long fallback, long long lo, long long hi) {
    const Leaf* leaf = table_.find(key);
    if (!leaf) return fallback;
    long long v = 0;
    if (!parse_number(plain_scalar(*leaf, key, "an integer"), &v)) {
      type_error(*leaf, key, "an integer");
    }
    check_range(key, v >= lo && v <= hi, v, lo, hi);
    return v;
  }

  uint64_t get_u64(const std::string& key, uint64_t fallback) {
    const Leaf* leaf = table_.find(key);
    if (!leaf) return fallback;
    const std::string& text = plain_scalar(*leaf, key, "a non-negative integer");
    uint64_t v = 0;
    if (!parse_number(text, &v)) type_error(*leaf, key, "a non-negative integer (0 .. 2^64-1)");
    return v;
  }

  template <typename T>
  T get_real(const std::string& key, T fallback) {
    const Leaf* leaf = table_.find(key);
    if (!leaf) return fallback;
    T v = 0;
    if (!parse_number(plain_scalar(*leaf, key, "a number"), &v)) type_error(*leaf, key, "a number");
    return v;
  }

  bool get_bool(const std::string& key, bool fallback) {
    const Leaf* leaf = table_.find(key);
    if (!leaf) return fallback;
    bool v = false;
    plain_scalar(*leaf, key, "true or false");
    if (!YAML::convert<bool>::decode(leaf->node, v)) type_error(*leaf, key, "true or false");
    return v;
  }

  // A string; null (or a missing key) gives `fallback`, or an error when `allow_null` is false.
  std::string get_string(const std::string& key, const std::string& fallback, bool allow_null) {
    const Leaf* leaf = table_.find(key);
    if (!leaf) return fallback;
    if (leaf->node.IsNull() && allow_null) return "";
    if (!leaf->node.IsScalar()) type_error(*leaf, key, allow_null ? "a string or null" : "a string");
    return leaf->node.Scalar();
  }

  // One of `names` (returns its index).
  size_t get_enum(const std::string& key, size_t fallback, const std::vector<std::string>& names) {
    const Leaf* leaf = table_.find(key);
    if (!leaf) return fallback;
    std::string expected = "one of ";
    for (size_t i = 0; i < names.size(); ++i) expected += (i ? ", " : "") + names[i];
    if (!leaf->node.IsScalar()) type_error(*leaf, key, expected.c_str());
    auto it = std::find(names.begin(), names.end(), leaf->node.Scalar());
    if (it == names.end()) type_error(*leaf, key, expected.c_str());
    return static_cast<size_t>(it - names.begin());
  }

  // A string or a list of strings; each entry with its own location. Null gives an empty list.
  std::vector<std::pair<std::string, std::string>> get_string_list(const std::string& key,
                                                                    const char* expected) {
    std::vector<std::pair<std::string, std::string>> out;  // (value, where)
    const Leaf* leaf = table_.find(key);
    if (!leaf || leaf->node.IsNull()) return out;
    if (leaf->node.IsScalar()) {
      out.emplace_back(leaf->node.Scalar(), leaf->where);
      return out;
    }
    if (!leaf->node.IsSequence()) type_error(*leaf, key, expected);
    for (const YAML::Node& item : leaf->node) {
      const std::string item_where =
          leaf->where.starts_with("--set ") ? leaf->where : file_line(table_.source(), item.Mark());
      if (!item.IsScalar()) {
        throw InputError(detail::concat(item_where, ": ", key, ": expected ", expected,
                                        ", got an entry that is ", describe(item)));
      }
      out.emplace_back(item.Scalar(), item_where);
    }
    return out;
  }

 private:
  void check_range(const std::string& key, bool ok, long long v, long long lo, long long hi) const {
    if (ok) return;
    const std::string range =
        v < lo ? "an integer >= " + std::to_string(lo) : "an integer <= " + std::to_string(hi);
    throw InputError(detail::concat(where(key), ": ", key, ": expected ", range, ", got ", v));
  }

  const LeafTable& table_;
};

// A range error on `key`, reported at the location of `where_key` (the key itself, or the other key
// of a cross-key check when `key` was left at its default).
[[noreturn]] void range_error(const Reader& r, const std::string& where_key, const std::string& key,
                              const std::string& expected, const std::string& got) {
  throw InputError(detail::concat(r.where(where_key), ": ", key, ": expected ", expected, ", got ", got));
}

// A data or weights path: relative paths resolve against the config file's directory (paths
// from an override against the working directory); the result is absolute and must name a
// readable regular file.
std::string resolve_input_file(const std::string& path, const std::string& where,
                               const std::string& key, const std::string& source) {
  if (path.empty()) {
    throw InputError(detail::concat(where, ": ", key, ": expected a file path, got an empty string"));
  }
  fs::path p(path);
  if (p.is_relative() && !where.starts_with("--set ")) p = fs::path(source).parent_path() / p;
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  if (ec) abs = p;
  abs = abs.lexically_normal();
  if (abs.has_parent_path() && abs.filename().empty()) abs = abs.parent_path();  // "dir/." -> "dir"
  const std::string shown = abs.string();
  fs::file_status st = fs::status(abs, ec);
  if (ec || !fs::exists(st)) {
    throw InputError(detail::concat(where, ": ", key, ": file '", path, "' does not exist (looked for ",
                                    shown, ")"));
  }
  if (!fs::is_regular_file(st)) {
    throw InputError(detail::concat(where, ": ", key, ": '", shown, "' is not a regular file"));
  }
  std::ifstream probe(abs, std::ios::binary);
  if (!probe) {
    throw InputError(detail::concat(where, ": ", key, ": file '", shown, "' cannot be read"));
  }
  return shown;
}

// data.tokenizer: a tokenizer.json or a model directory holding one, resolved like data files.
std::string resolve_tokenizer_path(const std::string& path, const std::string& where,
                                   const std::string& source) {
  if (path.empty()) {
    throw InputError(detail::concat(where, ": data.tokenizer: expected a tokenizer.json or a model directory, got an empty string"));
  }
  fs::path p(path);
  if (p.is_relative() && !where.starts_with("--set ")) p = fs::path(source).parent_path() / p;
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  if (ec) abs = p;
  abs = abs.lexically_normal();
  if (abs.has_parent_path() && abs.filename().empty()) abs = abs.parent_path();
  if (fs::is_directory(abs, ec)) {
    if (!fs::is_regular_file(abs / "tokenizer.json", ec)) {
      throw InputError(detail::concat(where, ": data.tokenizer: directory '", abs.string(),
                                      "' has no tokenizer.json"));
    }
    return abs.string();
  }
  return resolve_input_file(path, where, "data.tokenizer", source);
}

// A file or directory (lora.init_from: a checkpoint or a PEFT adapter directory), resolved like
// resolve_input_file; it must exist.
std::string resolve_input_path(const std::string& path, const std::string& where,
                               const std::string& key, const std::string& source) {
  fs::path p(path);
  if (p.is_relative() && !where.starts_with("--set ")) p = fs::path(source).parent_path() / p;
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  if (ec) abs = p;
  abs = abs.lexically_normal();
  if (abs.has_parent_path() && abs.filename().empty()) abs = abs.parent_path();
  if (!fs::exists(abs, ec)) {
    throw InputError(detail::concat(where, ": ", key, ": '", path, "' does not exist (looked for ",
                                    abs.string(), "; expected a checkpoint file or a PEFT adapter "
                                    "directory)"));
  }
  return abs.string();
}

// A directory path (model.path), resolved like resolve_input_file; it must name a directory.
std::string resolve_input_dir(const std::string& path, const std::string& where,
                              const std::string& key, const std::string& source) {
  if (path.empty()) {
    throw InputError(detail::concat(where, ": ", key, ": expected a directory, got an empty string"));
  }
  fs::path p(path);
  if (p.is_relative() && !where.starts_with("--set ")) p = fs::path(source).parent_path() / p;
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  if (ec) abs = p;
  abs = abs.lexically_normal();
  if (abs.has_parent_path() && abs.filename().empty()) abs = abs.parent_path();
  fs::file_status st = fs::status(abs, ec);
  if (ec || !fs::exists(st)) {
    throw InputError(detail::concat(where, ": ", key, ": directory '", path,
                                    "' does not exist (looked for ", abs.string(), ")"));
  }
  if (!fs::is_directory(st)) {
    throw InputError(detail::concat(where, ": ", key, ": '", abs.string(),
                                    "' is not a directory (expected a Hugging Face model directory)"));
  }
  return abs.string();
}

std::string_view device_backend_name(DeviceBackend b) {
  switch (b) {
    case DeviceBackend::kAuto: return "auto";
    case DeviceBackend::kCpu: return "cpu";
    case DeviceBackend::kCuda: return "cuda";
  }
  return "?";
}

std::string_view comm_backend_name(CommBackend b) {
  switch (b) {
    case CommBackend::kAuto: return "auto";
    case CommBackend::kLocal: return "local";
    case CommBackend::kMpi: return "mpi";
    case CommBackend::kNccl: return "nccl";
  }
  return "?";
}

// ---- resolved YAML -------------------------------------------------------------------------

std::string emit_resolved(const Config& c) {
  YAML::Emitter out;
  auto str = [&](const char* key, const std::string& v) {
    out << YAML::Key << key << YAML::Value;
    if (v.empty()) {
      out << YAML::Null;
    } else {
      out << YAML::DoubleQuoted << v;
    }
  };
  auto plain = [&](const char* key, std::string_view v) {
    out << YAML::Key << key << YAML::Value << std::string(v);
  };
  auto paths = [&](const char* key, const std::vector<std::string>& v) {
    out << YAML::Key << key << YAML::Value;
    if (v.empty()) out << YAML::Flow;  // "val: []"
    out << YAML::BeginSeq;
    for (const std::string& p : v) out << YAML::DoubleQuoted << p;
    out << YAML::EndSeq;
  };
  auto num = [&](const char* key, auto v) { plain(key, number_text(v)); };

  out << YAML::BeginMap;
  out << YAML::Key << "run" << YAML::Value << YAML::BeginMap;
  str("name", c.run.name);
  str("output_dir", c.run.output_dir);
  num("seed", c.run.seed);
  out << YAML::EndMap;

  const ModelSpec& ms = c.model.spec;
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  if (!c.model.path.empty()) str("path", c.model.path);
  plain("arch", ms.arch);
  str("weights", c.model.weights);
  num("vocab_size", ms.vocab_size);
  num("n_layer", ms.n_layer);
  num("n_head", ms.n_head);
  if (!ms.is_gpt2()) num("n_kv_head", ms.kv_heads());
  num("d_model", ms.d_model);
  if (!ms.is_gpt2() || ms.ff() != 4 * ms.d_model) num("d_ff", ms.ff());
  num("max_seq_len", ms.max_seq_len);
  if (ms.positions == PositionKind::kRope) num("rope_theta", ms.rope_theta);
  if (!ms.is_gpt2()) plain("tie_embeddings", ms.tied_embeddings ? "true" : "false");
  plain("dtype", c.model.dtype);
  out << YAML::EndMap;

  out << YAML::Key << "lora" << YAML::Value << YAML::BeginMap;
  num("rank", c.lora.rank);
  num("alpha", c.lora.alpha);
  num("dropout", c.lora.dropout);
  plain("rslora", c.lora.rslora ? "true" : "false");
  out << YAML::Key << "targets" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (LoraTarget t : c.lora.targets) out << std::string(lora_target_name(t, ms));
  out << YAML::EndSeq;
  out << YAML::Key << "init" << YAML::Value << YAML::BeginMap;
  plain("a", lora_init_a_name(c.lora.init_a));
  plain("b", lora_init_b_name(c.lora.init_b));
  out << YAML::EndMap;
  str("init_from", c.lora_init_from);
  out << YAML::EndMap;

  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  paths("train", c.data.train);
  paths("val", c.data.val);
  plain("format", data_format_name(c.data.format));
  num("seq_len", c.data.seq_len);
  str("tokenizer", c.data.tokenizer);
  plain("template", chat_template_name(c.data.chat_template));
  plain("mask_prompt", c.data.mask_prompt ? "true" : "false");
  plain("pack", c.data.pack ? "true" : "false");
  out << YAML::EndMap;

  const TrainConfig& t = c.train;
  out << YAML::Key << "train" << YAML::Value << YAML::BeginMap;
  plain("mode", train_mode_name(t.mode));
  num("micro_batch", t.micro_batch);
  num("grad_accum", t.grad_accum);
  num("steps", t.steps);
  num("lr", t.lr);
  num("warmup_steps", t.warmup_steps);
  plain("schedule", lr_schedule_name(t.schedule));
  num("min_lr", t.min_lr);
  num("weight_decay", t.weight_decay);
  num("grad_clip", t.grad_clip);
  num("eval_every", t.eval_every);
  num("eval_batches", t.eval_batches);
  num("log_every", t.log_every);
  out << YAML::EndMap;

  out << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap;
  str("dir", c.checkpoint.dir);
  if (c.checkpoint.dir.empty()) out << YAML::Comment("null: <run.output_dir>/checkpoints");
  num("every", c.checkpoint.every);
  num("keep", c.checkpoint.keep);
  out << YAML::EndMap;

  out << YAML::Key << "device" << YAML::Value << YAML::BeginMap;
  plain("backend", device_backend_name(c.device.backend));
  num("threads", c.device.threads);
  out << YAML::EndMap;

  out << YAML::Key << "comm" << YAML::Value << YAML::BeginMap;
  plain("backend", comm_backend_name(c.comm.backend));
  num("bucket_mb", c.comm.bucket_mb);
  plain("overlap", c.comm.overlap ? "true" : "false");
  num("timeout_s", c.comm.timeout_s);
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

// ---- typed config from the leaves ----------------------------------------------------------

Config build_config(const LeafTable& table) {
  Reader r(table);
  Config c;
  const Config defaults;
  constexpr long long kIntMax = INT_MAX;
  constexpr long long kLongMax = LLONG_MAX;

  // run
  c.run.name = r.get_string("run.name", defaults.run.name, false);
  if (c.run.name.empty()) range_error(r, "run.name", "run.name", "a non-empty name", "''");
  c.run.output_dir = r.get_string("run.output_dir", defaults.run.output_dir, false);
  if (c.run.output_dir.empty()) {
    range_error(r, "run.output_dir", "run.output_dir", "a non-empty path", "''");
  }
  c.run.seed = r.get_u64("run.seed", defaults.run.seed);

  // model: the spec from model.path's config.json (the YAML's shape keys must agree with it), or
  // the family's defaults with the YAML's sizes.
  const std::vector<std::string> archs{"gpt2", "llama", "qwen2", "mistral"};
  const std::string arch = archs[r.get_enum("model.arch", 0, archs)];
  c.model.path = r.get_string("model.path", "", true);
  c.model.weights = r.get_string("model.weights", "", true);
  ModelSpec given;  // the YAML's sizes, defaults where absent
  given.vocab_size = static_cast<int>(r.get_integer("model.vocab_size", given.vocab_size, 1, kIntMax));
  given.n_layer = static_cast<int>(r.get_integer("model.n_layer", given.n_layer, 1, kIntMax));
  given.n_head = static_cast<int>(r.get_integer("model.n_head", given.n_head, 1, kIntMax));
  given.n_kv_head = static_cast<int>(r.get_integer("model.n_kv_head", 0, 1, kIntMax));
  given.d_model = static_cast<int>(r.get_integer("model.d_model", given.d_model, 1, kIntMax));
  given.d_ff = static_cast<int>(r.get_integer("model.d_ff", 0, 1, kIntMax));
  given.max_seq_len = static_cast<int>(r.get_integer("model.max_seq_len", given.max_seq_len, 1, kIntMax));
  const float rope_theta = r.get_real<float>("model.rope_theta", 10000.0f);
  const std::vector<std::string> dtypes{"fp32", "bf16"};
  c.model.dtype = dtypes[r.get_enum("model.dtype", 0, dtypes)];
  ModelSpec& s = c.model.spec;
  if (!c.model.path.empty()) {
    if (!c.model.weights.empty()) {
      range_error(r, "model.weights", "model.weights",
                  "null when model.path is given (the directory's safetensors are the weights)",
                  "'" + c.model.weights + "'");
    }
    c.model.path = resolve_input_dir(c.model.path, r.where("model.path"), "model.path",
                                     table.source());
    const HfModelDir dir = read_hf_model_dir(c.model.path);
    s = dir.spec;
    if (table.find("model.arch") && arch != s.arch) {
      range_error(r, "model.arch", "model.arch", "'" + s.arch + "' as " + dir.config_path +
                  " says (model_type), or no model.arch", "'" + arch + "'");
    }
    auto agree = [&](const char* key, int yaml_value, int dir_value, const char* hf_key) {
      if (!table.find(key) || yaml_value == dir_value) return;
      range_error(r, key, key, std::to_string(dir_value) + " as " + dir.config_path + " says (" +
                  hf_key + "), or no " + key, std::to_string(yaml_value));
    };
    const bool g2 = s.is_gpt2();
    agree("model.vocab_size", given.vocab_size, s.vocab_size, "vocab_size");
    agree("model.n_layer", given.n_layer, s.n_layer, g2 ? "n_layer" : "num_hidden_layers");
    agree("model.n_head", given.n_head, s.n_head, g2 ? "n_head" : "num_attention_heads");
    agree("model.n_kv_head", given.n_kv_head, s.kv_heads(), "num_key_value_heads");
    agree("model.d_model", given.d_model, s.d_model, g2 ? "n_embd" : "hidden_size");
    agree("model.d_ff", given.d_ff, s.ff(), g2 ? "n_inner" : "intermediate_size");
    agree("model.max_seq_len", given.max_seq_len, s.max_seq_len,
          g2 ? "n_positions" : "max_position_embeddings");
    if (table.find("model.rope_theta") && rope_theta != s.rope_theta) {
      range_error(r, "model.rope_theta", "model.rope_theta",
                  number_text(s.rope_theta) + " as " + dir.config_path + " says, or no model.rope_theta",
                  number_text(rope_theta));
    }
    if (table.find("model.tie_embeddings") &&
        r.get_bool("model.tie_embeddings", false) != s.tied_embeddings) {
      range_error(r, "model.tie_embeddings", "model.tie_embeddings",
                  std::string(s.tied_embeddings ? "true" : "false") + " as " + dir.config_path +
                      " says (tie_word_embeddings), or no model.tie_embeddings",
                  s.tied_embeddings ? "false" : "true");
    }
  } else {
    if (given.d_model % given.n_head != 0) {
      range_error(r, table.find("model.n_head") ? "model.n_head" : "model.d_model", "model.n_head",
                  "a divisor of model.d_model = " + std::to_string(given.d_model),
                  std::to_string(given.n_head));
    }
    s = family_spec(arch, given);
    if (s.positions == PositionKind::kRope) s.rope_theta = rope_theta;
    else if (table.find("model.rope_theta"))
      range_error(r, "model.rope_theta", "model.rope_theta", "no rope_theta: " + arch +
                  " has learned positions", number_text(rope_theta));
    if (table.find("model.tie_embeddings")) {
      s.tied_embeddings = r.get_bool("model.tie_embeddings", s.tied_embeddings);
      if (s.is_gpt2() && !s.tied_embeddings)
        range_error(r, "model.tie_embeddings", "model.tie_embeddings",
                    "true for gpt2 (its LM head is the token embedding)", "false");
    }
    if (given.n_kv_head > 0 && given.n_head % given.n_kv_head != 0) {
      range_error(r, "model.n_kv_head", "model.n_kv_head",
                  "a divisor of model.n_head = " + std::to_string(given.n_head),
                  std::to_string(given.n_kv_head));
    }
    if (s.is_gpt2() && given.n_kv_head > 0 && given.n_kv_head != given.n_head) {
      range_error(r, "model.n_kv_head", "model.n_kv_head",
                  "model.n_head = " + std::to_string(given.n_head) +
                      " (GPT-2 has no grouped-query attention), or no model.n_kv_head",
                  std::to_string(given.n_kv_head));
    }
    validate_spec(s, table.source());
  }

  // lora
  LoraSpec& l = c.lora;
  l.rank = static_cast<int>(r.get_integer("lora.rank", l.rank, 1, kIntMax));
  l.alpha = r.get_real<float>("lora.alpha", l.alpha);
  l.dropout = r.get_real<float>("lora.dropout", l.dropout);
  l.rslora = r.get_bool("lora.rslora", l.rslora);
  if (const Leaf* leaf = table.find("lora.targets")) {
    if (!leaf->node.IsSequence() && !leaf->node.IsScalar()) {
      type_error(*leaf, "lora.targets", "a list of target names");
    }
    l.targets.clear();
    std::vector<std::string> given;
    for (auto& [name, where] : r.get_string_list("lora.targets", "a list of target names")) {
      if (name == "all-linear") {  // every linear of every block, as PEFT's "all-linear"
        for (LoraTarget t : family_targets(s)) {
          if (std::find(l.targets.begin(), l.targets.end(), t) != l.targets.end()) {
            throw InputError(detail::concat(where, ": lora.targets: 'all-linear' includes '",
                                            lora_target_name(t, s), "', which is listed too"));
          }
          l.targets.push_back(t);
          given.push_back(name);
        }
        continue;
      }
      std::optional<LoraTarget> t = parse_lora_target(name, s);
      if (!t) {
        throw InputError(detail::concat(where, ": lora.targets: unknown target '", name,
                                        "' for a ", s.arch, " model (expected one of: ",
                                        lora_target_names_help(s), ")"));
      }
      auto dup = std::find(l.targets.begin(), l.targets.end(), *t);
      if (dup != l.targets.end()) {
        const std::string& first = given[dup - l.targets.begin()];
        const std::string tname(lora_target_name(*t, s));
        const std::string why = first == name ? std::string()
                                              : " ('" + first + "' and '" + name + "' both name " +
                                                    tname + ")";
        throw InputError(detail::concat(where, ": lora.targets: '", tname, "' is listed twice", why));
      }
      l.targets.push_back(*t);
      given.push_back(name);
    }
    if (l.targets.empty()) {
      throw InputError(detail::concat(leaf->where, ": lora.targets: expected at least one target (",
                                      lora_target_names_help(s), ")"));
    }
  } else if (!s.is_gpt2()) {
    l.targets = {LoraTarget::kQ, LoraTarget::kV};  // the Llama family's usual default, as PEFT's
  }
  l.init_a = static_cast<LoraInitA>(r.get_enum("lora.init.a", 0, {"gaussian", "kaiming", "zeros"}));
  l.init_b = static_cast<LoraInitB>(r.get_enum("lora.init.b", 0, {"zeros", "gaussian"}));
  c.lora_init_from = r.get_string("lora.init_from", "", true);
  if (!c.lora_init_from.empty())
    c.lora_init_from = resolve_input_path(c.lora_init_from, r.where("lora.init_from"),
                                          "lora.init_from", table.source());

  // data
  c.data.format = static_cast<DataFormat>(r.get_enum("data.format", 0, {"text", "tokens", "jsonl"}));
  c.data.seq_len = static_cast<int>(r.get_integer("data.seq_len", c.data.seq_len, 1, kIntMax));
  const std::string tokenizer_path = r.get_string("data.tokenizer", "", true);
  c.data.chat_template =
      static_cast<ChatTemplate>(r.get_enum("data.template", 0, {"none", "chatml", "llama3"}));
  c.data.mask_prompt = r.get_bool("data.mask_prompt", c.data.mask_prompt);
  c.data.pack = r.get_bool("data.pack", c.data.pack);
  const auto train_paths = r.get_string_list("data.train", "a path or a list of paths");
  const auto val_paths = r.get_string_list("data.val", "a path or a list of paths");

  // train
  TrainConfig& t = c.train;
  t.mode = static_cast<TrainMode>(r.get_enum("train.mode", 0, {"lora", "full"}));
  t.micro_batch = static_cast<int>(r.get_integer("train.micro_batch", t.micro_batch, 1, kIntMax));
  t.grad_accum = static_cast<int>(r.get_integer("train.grad_accum", t.grad_accum, 1, kIntMax));
  t.steps = static_cast<long>(r.get_integer("train.steps", t.steps, 1, kLongMax));
  t.lr = r.get_real<float>("train.lr", t.lr);
  t.warmup_steps = static_cast<long>(r.get_integer("train.warmup_steps", t.warmup_steps, 0, kLongMax));
  t.schedule = static_cast<LrSchedule>(r.get_enum("train.schedule", 0, {"cosine", "constant"}));
  t.min_lr = r.get_real<float>("train.min_lr", t.min_lr);
  t.weight_decay = r.get_real<float>("train.weight_decay", t.weight_decay);
  t.grad_clip = r.get_real<float>("train.grad_clip", t.grad_clip);
  t.eval_every = static_cast<long>(r.get_integer("train.eval_every", t.eval_every, 0, kLongMax));
  t.eval_batches = static_cast<int>(r.get_integer("train.eval_batches", t.eval_batches, 1, kIntMax));
  t.log_every = static_cast<long>(r.get_integer("train.log_every", t.log_every, 1, kLongMax));

  // checkpoint
  c.checkpoint.dir = r.get_string("checkpoint.dir", "", true);
  c.checkpoint.every = static_cast<long>(r.get_integer("checkpoint.every", c.checkpoint.every, 0, kLongMax));
  c.checkpoint.keep = static_cast<int>(r.get_integer("checkpoint.keep", c.checkpoint.keep, 1, kIntMax));

  // device, comm
  c.device.backend = static_cast<DeviceBackend>(r.get_enum("device.backend", 0, {"auto", "cpu", "cuda"}));
  c.device.threads = static_cast<int>(r.get_integer("device.threads", c.device.threads, 0, kIntMax));
  c.comm.backend =
      static_cast<CommBackend>(r.get_enum("comm.backend", 0, {"auto", "local", "mpi", "nccl"}));
  c.comm.bucket_mb = r.get_real<double>("comm.bucket_mb", c.comm.bucket_mb);
  c.comm.overlap = r.get_bool("comm.overlap", c.comm.overlap);
  c.comm.timeout_s = r.get_real<double>("comm.timeout_s", c.comm.timeout_s);

  // ---- ranges that need more than one key, and real-valued ranges ----
  // A cross-key error is reported at the offending key's line, or at the other key's line when
  // the offending key was left at its default.
  auto set_or = [&](const char* key, const char* other) { return table.find(key) ? key : other; };
  if (c.data.format == DataFormat::kText && tokenizer_path.empty() && s.vocab_size < 256) {
    range_error(r, set_or("model.vocab_size", "data.format"), "model.vocab_size",
                "at least 256 with data.format text (one token per byte)",
                std::to_string(s.vocab_size));
  }
  if (c.data.seq_len > s.max_seq_len) {
    range_error(r, set_or("data.seq_len", "model.max_seq_len"), "data.seq_len",
                "at most model.max_seq_len = " + std::to_string(s.max_seq_len),
                std::to_string(c.data.seq_len));
  }
  if (s.sliding_window > 0 && c.data.seq_len > s.sliding_window) {
    range_error(r, "data.seq_len", "data.seq_len",
                "at most the model's sliding_window = " + std::to_string(s.sliding_window) +
                    " (sliding-window attention is not implemented; within the window it is full "
                    "causal attention)",
                std::to_string(c.data.seq_len));
  }
  if (!(l.alpha > 0)) range_error(r, "lora.alpha", "lora.alpha", "a number > 0", number_text(l.alpha));
  if (!(l.dropout >= 0 && l.dropout < 1)) {
    range_error(r, "lora.dropout", "lora.dropout", "a number in [0, 1)", number_text(l.dropout));
  }
  if (t.mode == TrainMode::kLora) {
    for (LoraTarget target : l.targets) {
      const TargetGeometry g = lora_target_geometry(target, s);
      const int limit = std::min(g.d_in, g.d_out);
      if (l.rank > limit) {
        range_error(r, set_or("lora.rank", "model.d_model"), "lora.rank",
                    "at most " + std::to_string(limit) + " = min(d_in, d_out) of target " +
                        std::string(lora_target_name(target, s)) + " [" + std::to_string(g.d_in) +
                        ", " + std::to_string(g.d_out) + "] at model.d_model = " +
                        std::to_string(s.d_model),
                    std::to_string(l.rank));
      }
    }
  }
  if (!(t.lr > 0)) range_error(r, "train.lr", "train.lr", "a number > 0", number_text(t.lr));
  if (t.warmup_steps > t.steps) {
    range_error(r, set_or("train.warmup_steps", "train.steps"), "train.warmup_steps",
                "at most train.steps = " + std::to_string(t.steps), std::to_string(t.warmup_steps));
  }
  if (!(t.min_lr >= 0 && t.min_lr <= t.lr)) {
    range_error(r, set_or("train.min_lr", "train.lr"), "train.min_lr",
                "a number in [0, train.lr = " + number_text(t.lr) + "]", number_text(t.min_lr));
  }
  if (!(t.weight_decay >= 0)) {
    range_error(r, "train.weight_decay", "train.weight_decay", "a number >= 0",
                number_text(t.weight_decay));
  }
  if (!(t.grad_clip >= 0)) {
    range_error(r, "train.grad_clip", "train.grad_clip", "a number >= 0 (0 disables clipping)",
                number_text(t.grad_clip));
  }
  if (!(c.comm.bucket_mb > 0)) {
    range_error(r, "comm.bucket_mb", "comm.bucket_mb", "a number > 0", number_text(c.comm.bucket_mb));
  }
  if (!(c.comm.timeout_s > 0)) {
    range_error(r, "comm.timeout_s", "comm.timeout_s", "a number > 0", number_text(c.comm.timeout_s));
  }

  // ---- files ----
  if (train_paths.empty()) {
    const Leaf* leaf = table.find("data.train");
    throw InputError(detail::concat(leaf ? leaf->where : table.source(),
                                    ": data.train: required (a path or a list of paths), ",
                                    leaf ? "got an empty value" : "not given"));
  }
  for (const auto& [path, where] : train_paths) {
    c.data.train.push_back(resolve_input_file(path, where, "data.train", table.source()));
  }
  for (const auto& [path, where] : val_paths) {
    c.data.val.push_back(resolve_input_file(path, where, "data.val", table.source()));
  }
  if (!tokenizer_path.empty()) {
    c.data.tokenizer = resolve_tokenizer_path(tokenizer_path, r.where("data.tokenizer"), table.source());
  }
  // Without data.tokenizer, model.path's tokenizer.json is the tokenizer (tokenizer_source()).
  if (c.data.format == DataFormat::kJsonl && tokenizer_source(c).empty()) {
    throw InputError(detail::concat(r.where("data.format"),
                                    ": data.tokenizer: required with data.format jsonl (a tokenizer.json "
                                    "or a model directory), unless model.path holds a tokenizer.json"));
  }
  if (!c.model.weights.empty()) {
    c.model.weights = resolve_input_file(c.model.weights, r.where("model.weights"), "model.weights",
                                         table.source());
  }
  return c;
}

}  // namespace

std::string Config::checkpoint_dir() const {
  return checkpoint.dir.empty() ? run.output_dir + "/checkpoints" : checkpoint.dir;
}

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw InputError(detail::concat(file_line(source_name, e.mark), ": invalid YAML: ", e.msg));
  }
  if (root.IsNull()) {
    throw InputError(detail::concat(source_name, ":1: the config is empty (expected a mapping with ",
                                    "sections: ", children_of(""), "; data.train is required)"));
  }
  LeafTable table(source_name);
  table.add_file_map(root, "", YAML::Mark());
  for (const std::string& o : overrides) table.add_override(o);
  Config c = build_config(table);
  c.source_path = source_name;
  c.given_keys = table.given_keys();
  c.resolved_yaml = emit_resolved(c);
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw InputError(detail::concat(path, ": config file does not exist"));
  if (!fs::is_regular_file(st)) throw InputError(detail::concat(path, ": config is not a regular file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(detail::concat(path, ": config file cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(detail::concat(path, ": error while reading the config file"));
  return parse_config(text.str(), path, overrides);
}

std::string resolved_config_yaml(const Config& c) { return emit_resolved(c); }

std::string_view data_format_name(DataFormat f) {
  switch (f) {
    case DataFormat::kText: return "text";
    case DataFormat::kTokens: return "tokens";
    case DataFormat::kJsonl: return "jsonl";
  }
  return "?";
}

std::string_view chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kNone: return "none";
    case ChatTemplate::kChatml: return "chatml";
    case ChatTemplate::kLlama3: return "llama3";
  }
  return "?";
}

std::string tokenizer_source(const Config& c) {
  if (!c.data.tokenizer.empty()) return c.data.tokenizer;
  std::error_code ec;
  if (!c.model.path.empty() && fs::is_regular_file(fs::path(c.model.path) / "tokenizer.json", ec))
    return c.model.path;
  return "";
}

std::string_view lr_schedule_name(LrSchedule s) {
  return s == LrSchedule::kCosine ? "cosine" : "constant";
}

std::string_view train_mode_name(TrainMode m) { return m == TrainMode::kLora ? "lora" : "full"; }

}  // namespace lora
