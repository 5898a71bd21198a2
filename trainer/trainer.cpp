#include "trainer/trainer.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "comm/grad_reducer.h"
#include "core/error.h"
#include "core/model/hf_model.h"
#include "core/model/transformer.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "trainer/device.h"
#include "trainer/lr_schedule.h"

namespace fs = std::filesystem;

namespace lora {

namespace {

constexpr uint64_t kLoraInitStream = 0x6c6f7261ull;  // "lora"
constexpr uint64_t kDropoutStream = 0x64726f70ull;   // "drop"
constexpr uint64_t kEvalStream = 0x6576616cull;      // "eval"

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

std::string human_duration(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
}

// The sequences of one micro-batch: global indices rank + world * (micro * m + j), j < m.
// tokens, targets [m, seq_len]; seq_ids [m].
void fill_batch(const TokenStream& data, uint64_t seed, uint64_t step, int rank, int world,
                int micro, int m, int seq_len, int32_t* tokens, int32_t* targets,
                uint64_t* seq_ids) {
  for (int j = 0; j < m; ++j) {
    const uint64_t global = static_cast<uint64_t>(rank) +
                            static_cast<uint64_t>(world) * (static_cast<uint64_t>(micro) * m + j);
    seq_ids[j] = global;
    data.fill_sequence(seed, step, global, seq_len, tokens + static_cast<size_t>(j) * seq_len,
                       targets + static_cast<size_t>(j) * seq_len);
  }
}

}  // namespace

int configure_threads(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
  return n;
}

std::unique_ptr<Model> build_model(const Config& cfg) {
  LORA_INPUT_CHECK(cfg.model.dtype == "fp32", cfg.source_path, ": model.dtype: ", cfg.model.dtype,
                   " is not implemented yet: both backends compute in fp32 (expected fp32)");
  std::optional<LoraSpec> lora;
  if (cfg.train.mode == TrainMode::kLora) lora = cfg.lora;
  auto model = std::make_unique<TransformerModel>(cfg.model.spec, cfg.train.mode, lora);
  if (!cfg.model.path.empty()) {
    load_base_weights(read_hf_model_dir(cfg.model.path).weight_files, model->base_layout(),
                      model->base_params());
  } else if (!cfg.model.weights.empty()) {
    load_base_weights({cfg.model.weights}, model->base_layout(), model->base_params());
  } else {
    model->init_base_random(cfg.run.seed);
  }
  model->refresh_fingerprint();
  model->init_lora(hash_u64(cfg.run.seed, kLoraInitStream));
  // Weights are read and initialised on the host once; a CUDA run uploads them (trainer/device.h).
  return place_model(std::move(model), cfg);
}

std::unique_ptr<Model> build_model_with_adapter(const Config& cfg, const Adapter& adapter,
                                                const std::string& what, Config* effective) {
  const Config eff = config_for_adapter(cfg, adapter, what);
  auto model = build_model(eff);
  if (adapter.checkpoint) check_checkpoint_fits(*adapter.checkpoint, adapter.path, *model, eff);
  LORA_CHECK(adapter.params.size() == model->n_trainable(), "adapter ", adapter.path, " has ",
             adapter.params.size(), " parameters, the model ", model->n_trainable());
  model->set_trainable(adapter.params);
  if (effective) *effective = eff;
  return model;
}

uint64_t lora_grad_bytes(const ModelSpec& spec, const LoraSpec& lora) {
  return LoraLayout(spec, lora).n_params() * sizeof(float);
}

uint64_t full_grad_bytes(const ModelSpec& spec) {
  return BaseLayout(spec).n_params() * sizeof(float);
}

double evaluate(Model& model, const TokenStream& val, const Config& cfg, comm::Communicator& comm) {
  const int T = cfg.data.seq_len, m = cfg.train.micro_batch;
  const long total = static_cast<long>(cfg.train.eval_batches) * m;
  std::vector<int32_t> tokens(static_cast<size_t>(m) * T), targets(tokens.size());
  std::vector<uint64_t> ids(m);
  double sums[2] = {0.0, 0.0};  // loss sum, unmasked target count
  std::vector<long> mine;
  for (long i = comm.rank(); i < total; i += comm.size()) mine.push_back(i);
  for (size_t begin = 0; begin < mine.size(); begin += m) {
    const int n = static_cast<int>(std::min<size_t>(m, mine.size() - begin));
    for (int j = 0; j < n; ++j) {
      const uint64_t i = static_cast<uint64_t>(mine[begin + j]);
      ids[j] = i;
      val.fill_sequence(hash_u64(cfg.run.seed, kEvalStream), 0, i, T, tokens.data() + static_cast<size_t>(j) * T,
                        targets.data() + static_cast<size_t>(j) * T);
    }
    const float loss = model.forward(tokens.data(), targets.data(), n, T);
    sums[0] += static_cast<double>(loss) * static_cast<double>(model.n_targets());
    sums[1] += static_cast<double>(model.n_targets());
  }
  comm.all_reduce(std::span<double>(sums, 2), comm::ReduceOp::kSum);
  return sums[1] > 0 ? sums[0] / sums[1] : std::numeric_limits<double>::quiet_NaN();
}

WindowEval evaluate_windows(Model& model, const TokenStream& val, int seq_len, int micro_batch,
                            long max_windows, comm::Communicator& comm) {
  LORA_CHECK(seq_len > 0 && micro_batch > 0, "seq_len and micro_batch must be positive");
  // One example per sequence (JSONL without packing): each example is one window, padded.
  const bool examples = val.one_example_per_sequence();
  const size_t n_targets = val.size() > 0 ? val.size() - 1 : 0;
  long windows = examples ? static_cast<long>(val.n_examples())
                          : static_cast<long>((n_targets + seq_len - 1) / seq_len);
  if (max_windows > 0) windows = std::min(windows, max_windows);
  auto length = [&](long w) {
    if (examples) return seq_len;
    return static_cast<int>(std::min<size_t>(seq_len, n_targets - static_cast<size_t>(w) * seq_len));
  };
  std::vector<int32_t> tokens(static_cast<size_t>(micro_batch) * seq_len), targets(tokens.size());
  double sums[2] = {0.0, 0.0};  // loss sum, unmasked target count
  std::vector<long> batch;
  auto run = [&](int len) {
    const int n = static_cast<int>(batch.size());
    for (int j = 0; j < n; ++j) {
      int32_t* x = tokens.data() + static_cast<size_t>(j) * len;
      int32_t* y = targets.data() + static_cast<size_t>(j) * len;
      if (examples) val.copy_example(static_cast<size_t>(batch[j]), len, x, y);
      else val.copy_sequence(static_cast<size_t>(batch[j]) * seq_len, len, x, y);
    }
    const float loss = model.forward(tokens.data(), targets.data(), n, len);
    sums[0] += static_cast<double>(loss) * static_cast<double>(model.n_targets());
    sums[1] += static_cast<double>(model.n_targets());
    batch.clear();
  };
  for (long w = comm.rank(); w < windows; w += comm.size()) {
    // Full windows go micro_batch at a time; a shorter (last) window runs on its own.
    if (length(w) != seq_len) {
      if (!batch.empty()) run(seq_len);
      batch.push_back(w);
      run(length(w));
      continue;
    }
    batch.push_back(w);
    if (static_cast<int>(batch.size()) == micro_batch) run(seq_len);
  }
  if (!batch.empty()) run(seq_len);
  comm.all_reduce(std::span<double>(sums, 2), comm::ReduceOp::kSum);
  WindowEval out;
  out.loss = sums[1] > 0 ? sums[0] / sums[1] : std::numeric_limits<double>::quiet_NaN();
  out.tokens = static_cast<long>(sums[1]);
  out.windows = windows;
  return out;
}

namespace {

void flatten_yaml(const YAML::Node& node, const std::string& prefix,
                  std::map<std::string, std::string>& out) {
  if (node.IsMap()) {
    for (const auto& kv : node)
      flatten_yaml(kv.second, prefix.empty() ? kv.first.as<std::string>()
                                             : prefix + "." + kv.first.as<std::string>(), out);
  } else {
    YAML::Emitter e;
    e << YAML::Flow << node;
    out[prefix] = e.c_str();
  }
}

// Keys that change what the adapters mean or which data a step sees: never changed on resume.
const std::set<std::string> kFrozenOnResume = {
    "model.arch", "model.vocab_size", "model.n_layer", "model.n_head", "model.n_kv_head",
    "model.d_model", "model.d_ff", "model.max_seq_len", "model.rope_theta",
    "model.tie_embeddings", "lora.rank", "lora.alpha", "lora.rslora", "lora.targets",
    "train.mode", "run.seed", "data.format", "data.seq_len", "data.tokenizer", "data.template",
    "data.mask_prompt", "data.pack"};

// Keys added after checkpoints already existed, with the value that means what their absence
// meant: a checkpoint without the key resumes under that value with no change to report.
const std::map<std::string, std::string> kAddedKeyDefaults = {
    {"data.tokenizer", "~"}, {"data.template", "none"}, {"data.mask_prompt", "true"}, {"data.pack", "true"}};

// Resume state that every rank needs, sent from rank 0 (only rank 0 reads the file).
struct ResumeScalars {
  int64_t has = 0, step = 0, tokens_seen = 0, optimizer_step = 0;
};

}  // namespace

std::vector<std::string> resume_config_changes(const std::string& ckpt_yaml, const Config& cfg,
                                               const std::string& path) {
  std::map<std::string, std::string> old_keys, new_keys;
  try {
    flatten_yaml(YAML::Load(ckpt_yaml), "", old_keys);
  } catch (const YAML::Exception& e) {
    throw InputError(path + ": the stored config does not parse: " + e.what());
  }
  flatten_yaml(YAML::Load(cfg.resolved_yaml), "", new_keys);
  std::vector<std::string> changes;
  for (const auto& [key, value] : new_keys) {
    auto it = old_keys.find(key);
    const std::string old_value = it == old_keys.end() ? "(unset)" : it->second;
    if (old_value == value) continue;
    if (it == old_keys.end()) {
      const auto d = kAddedKeyDefaults.find(key);
      if (d != kAddedKeyDefaults.end() && d->second == value) continue;
    }
    // A key the checkpoint's config does not have was added after it was written (model.n_kv_head,
    // say); the model spec itself is compared by check_checkpoint_fits.
    if (kFrozenOnResume.count(key) && it != old_keys.end())
      throw InputError(path + ": cannot resume with " + key + " = " + value +
                       ": the checkpoint was trained with " + key + " = " + old_value);
    changes.push_back(key + ": " + old_value + " -> " + value);
  }
  return changes;
}

void check_checkpoint_fits(const CheckpointState& c, const std::string& path, const Model& model,
                           const Config& cfg) {
  auto mismatch = [&](const std::string& what, const auto& ckpt_value, const auto& cfg_value) {
    std::ostringstream os;
    os << path << ": checkpoint " << what << " is " << ckpt_value << " but the config gives "
       << cfg_value;
    throw InputError(os.str());
  };
  const ModelSpec& a = c.spec;
  const ModelSpec& b = cfg.model.spec;
  if (a.arch != b.arch) mismatch("model.arch", a.arch, b.arch);
  if (a.vocab_size != b.vocab_size) mismatch("model.vocab_size", a.vocab_size, b.vocab_size);
  if (a.max_seq_len != b.max_seq_len) mismatch("model.max_seq_len", a.max_seq_len, b.max_seq_len);
  if (a.n_layer != b.n_layer) mismatch("model.n_layer", a.n_layer, b.n_layer);
  if (a.n_head != b.n_head) mismatch("model.n_head", a.n_head, b.n_head);
  if (a.kv_heads() != b.kv_heads()) mismatch("model.n_kv_head", a.kv_heads(), b.kv_heads());
  if (a.d_model != b.d_model) mismatch("model.d_model", a.d_model, b.d_model);
  if (a.ff() != b.ff()) mismatch("model.d_ff", a.ff(), b.ff());
  if (a.head_size() != b.head_size()) mismatch("head_dim", a.head_size(), b.head_size());
  if (describe_spec(a) != describe_spec(b))
    mismatch("model", "'" + describe_spec(a) + "'", "'" + describe_spec(b) + "'");
  if (c.mode != cfg.train.mode)
    mismatch("train.mode", train_mode_name(c.mode), train_mode_name(cfg.train.mode));
  if (c.mode == TrainMode::kLora) {
    const std::string& fp = model.base_fingerprint();
    if (c.base_fingerprint != fp)
      throw InputError(path + ": the adapters were trained on a base with fingerprint " +
                       c.base_fingerprint + ", but this config's base (" +
                       (!cfg.model.path.empty()      ? cfg.model.path
                        : !cfg.model.weights.empty() ? cfg.model.weights
                                                     : std::string("random init from run.seed")) +
                       ") has fingerprint " + fp);
    if (c.lora.rank != cfg.lora.rank) mismatch("lora.rank", c.lora.rank, cfg.lora.rank);
    if (c.lora.alpha != cfg.lora.alpha) mismatch("lora.alpha", c.lora.alpha, cfg.lora.alpha);
    if (c.lora.rslora != cfg.lora.rslora) mismatch("lora.rslora", c.lora.rslora, cfg.lora.rslora);
    auto names = [&](const LoraSpec& s) {
      std::string out;
      for (LoraTarget t : family_targets(b))
        if (s.has_target(t)) out += (out.empty() ? "" : ",") + std::string(lora_target_name(t, b));
      return "[" + out + "]";
    };
    if (names(c.lora) != names(cfg.lora)) mismatch("lora.targets", names(c.lora), names(cfg.lora));
    auto settings = [](const LoraSpec& s) {
      std::string out;
      for (const auto& [name, m] : s.module_settings)
        out += (out.empty() ? "" : ", ") + name + " r=" + std::to_string(m.rank) + " alpha=" +
               std::to_string(m.alpha);
      return out.empty() ? std::string("none") : out;
    };
    if (c.lora.module_settings != cfg.lora.module_settings)
      mismatch("per-module ranks and alphas", settings(c.lora), settings(cfg.lora));
  }
  if (c.params.size() != model.n_trainable())
    mismatch("parameter count", c.params.size(), model.n_trainable());
}

void load_checkpoint_weights(Model& model, const Config& cfg, const std::string& path) {
  const CheckpointState c = read_checkpoint(path);
  check_checkpoint_fits(c, path, model, cfg);
  model.set_trainable(c.params);
}

namespace {

// Rank 0: finds the checkpoint --resume asks for, checks that it fits the config, and loads it into
// the model and the optimizer. Returns the scalars every rank needs (has = 0: start fresh).
ResumeScalars restore_checkpoint(const Config& cfg, const TrainOptions& opts, Model& model,
                                 TrainableOptimizer& optimizer, int world, std::ostream& out,
                                 std::string* metrics_so_far) {
  const std::string ckpt_dir = cfg.checkpoint_dir();
  std::string path = opts.resume_path;
  if (opts.resume == ResumeMode::kAuto) {
    const CheckpointScan scan = find_latest_checkpoint(ckpt_dir);
    for (const auto& [p, why] : scan.skipped)
      out << "lora: resume: skipping invalid checkpoint " << p << ": " << why << "\n";
    if (!scan.latest_valid) {
      out << "lora: resume: no valid checkpoint in " << ckpt_dir << ", starting fresh\n";
      return {};
    }
    path = *scan.latest_valid;
  }
  CheckpointState c = read_checkpoint(path);
  check_checkpoint_fits(c, path, model, cfg);
  for (const std::string& change : resume_config_changes(c.config_yaml, cfg, path))
    out << "lora: resume: changed " << change << "\n";
  LORA_INPUT_CHECK(c.step <= cfg.train.steps, path, ": checkpoint is at step ", c.step,
                   " but train.steps is ", cfg.train.steps);
  model.set_trainable(c.params);
  optimizer.set_moments(c.adam_m, c.adam_v);
  *metrics_so_far = c.metrics_jsonl;
  out << "lora: resume: from " << path << " at step " << c.step << " (" << c.tokens_seen
      << " tokens seen, written by a world of " << c.world_size << ")";
  if (c.world_size != world) out << "; continuing with a world of " << world;
  out << std::endl;
  return {1, c.step, static_cast<int64_t>(c.tokens_seen), c.optimizer_step};
}

// Full mode: the trained model as a Hugging Face model directory in run.output_dir
// (model.safetensors, then config.json; each written atomically).
void save_full_model(const Config& cfg, const Model& model) {
  std::vector<float> base(model.n_base_params());
  model.get_base(base);
  const fs::path dir(cfg.run.output_dir);
  save_base_weights((dir / "model.safetensors").string(), model.base_layout(), base.data());
  json::Value source;
  if (!cfg.model.path.empty()) source = read_hf_model_dir(cfg.model.path).config;
  const json::Value config = hf_config_for(cfg.model.spec, cfg.model.path.empty() ? nullptr : &source);
  const fs::path tmp = dir / "config.json.tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << json::dump(config) << "\n";
    f.close();
    if (!f) throw Error(tmp.string() + ": cannot write");
  }
  std::error_code ec;
  fs::rename(tmp, dir / "config.json", ec);
  if (ec) throw Error((dir / "config.json").string() + ": cannot rename into place: " + ec.message());
}

// Rank 0's trainable parameters to every rank, through host memory.
void broadcast_trainable(Model& model, comm::Communicator& comm) {
  std::vector<float> host(model.n_trainable());
  model.get_trainable(host);
  comm.broadcast(std::span<float>(host), 0);
  model.set_trainable(host);
}

// Creates run.output_dir and, on rank 0, checks that checkpoints can be written, so a bad
// directory fails at start rather than at the first checkpoint hours later.
void prepare_output_dirs(const Config& cfg, bool lead) {
  std::error_code ec;
  fs::create_directories(cfg.run.output_dir, ec);
  LORA_INPUT_CHECK(!ec, "run.output_dir: cannot create '", cfg.run.output_dir, "': ", ec.message());
  if (!lead) return;
  const std::string ckpt_dir = cfg.checkpoint_dir();
  fs::create_directories(ckpt_dir, ec);
  const fs::path probe = fs::path(ckpt_dir) / (".write-test-" + std::to_string(::getpid()));
  std::ofstream f(probe);
  const bool ok = !ec && f.is_open() && (f << "x").flush();
  f.close();
  fs::remove(probe, ec);
  LORA_INPUT_CHECK(ok, "checkpoint.dir: cannot write checkpoints to '", ckpt_dir,
                   "' (expected a writable directory)");
}

// The start-up lines rank 0 prints: what trains, how much of the model, and what a step sends.
void print_startup(std::ostream& out, const Config& cfg, const comm::Communicator& comm,
                   const Model& model, int threads, size_t train_tokens) {
  const uint64_t grad_bytes = model.n_trainable() * sizeof(float);
  const uint64_t full_bytes = full_grad_bytes(cfg.model.spec);
  const size_t n_total = model.n_base_params() + model.n_lora_params();
  const long global_batch = cfg.global_batch(comm.size());
  char line[256];
  out << "lora: " << cfg.run.name << " | " << train_mode_name(cfg.train.mode) << " | world "
      << comm.size() << " x " << threads << " threads | device " << describe_device(model)
      << " | comm " << comm.name() << "\n";
  out << "lora: model " << describe_spec(cfg.model.spec)
      << (cfg.model.path.empty() ? std::string() : " | from " + cfg.model.path) << "\n";
  std::snprintf(line, sizeof line, "lora: params trainable %s of %s (%.3f%%)",
                human_count(double(model.n_trainable())).c_str(), human_count(double(n_total)).c_str(),
                100.0 * double(model.n_trainable()) / double(n_total));
  out << line;
  if (cfg.train.mode == TrainMode::kLora)
    out << " | rank " << cfg.lora.rank << " alpha " << cfg.lora.alpha << " scaling "
        << cfg.lora.scaling() << " on " << model.lora_layout()->modules().size() << " modules";
  out << "\n";
  std::snprintf(line, sizeof line,
                "lora: all-reduce per step %s (%llu bytes) vs %s for full fine-tuning: %.1fx less",
                human_bytes(double(grad_bytes)).c_str(), static_cast<unsigned long long>(grad_bytes),
                human_bytes(double(full_bytes)).c_str(), double(full_bytes) / double(grad_bytes));
  out << line << "\n";
  out << "lora: global batch " << global_batch << " sequences x " << cfg.data.seq_len << " = "
      << global_batch * cfg.data.seq_len << " tokens/step | " << train_tokens << " train tokens"
      << " | base " << model.base_fingerprint() << std::endl;
}

// One logged step: the progress line and the metrics.jsonl object carry the same fields.
struct StepRecord {
  long step = 0, total_steps = 0;
  double loss = 0, tokens_per_s = 0, comm_bytes = 0, comm_ms = 0, eta_s = 0, elapsed_s = 0;
  float lr = 0, grad_norm = 0;
  uint64_t tokens_seen = 0, tokens_trained = 0;
  bool has_val = false;
  double val_loss = 0;
};

std::string progress_line(const StepRecord& r) {
  char line[512];
  int n = std::snprintf(line, sizeof line,
                        "step %ld/%ld | loss %.4f | lr %.2e | %.0f tok/s | comm %s/step, %.2f ms "
                        "exposed | eta %s",
                        r.step, r.total_steps, r.loss, r.lr, r.tokens_per_s,
                        human_bytes(r.comm_bytes).c_str(), r.comm_ms, human_duration(r.eta_s).c_str());
  if (r.has_val) std::snprintf(line + n, sizeof line - n, " | val %.4f", r.val_loss);
  return line;
}

std::string metrics_json(const StepRecord& r) {
  char json[768];
  int j = std::snprintf(json, sizeof json,
                        "{\"step\": %ld, \"loss\": %.6f, \"lr\": %.6e, \"tokens_per_s\": %.1f, "
                        "\"tokens_seen\": %llu, \"tokens_trained\": %llu, \"comm_bytes_per_step\": %.0f, "
                        "\"comm_exposed_ms_per_step\": %.4f, \"grad_norm\": %.6f, "
                        "\"elapsed_s\": %.3f",
                        r.step, r.loss, r.lr, r.tokens_per_s,
                        static_cast<unsigned long long>(r.tokens_seen),
                        static_cast<unsigned long long>(r.tokens_trained), r.comm_bytes, r.comm_ms,
                        r.grad_norm, r.elapsed_s);
  if (r.has_val) j += std::snprintf(json + j, sizeof json - j, ", \"val_loss\": %.6f", r.val_loss);
  std::snprintf(json + j, sizeof json - j, "}");
  return json;
}

}  // namespace

TrainSummary train(const Config& given_cfg, comm::Communicator& comm, const TrainOptions& opts) {
  // lora.init_from: the adapter's LoRA settings become the run's (every rank reads the same file),
  // its parameters the starting point; a resumed checkpoint still replaces them below.
  std::optional<Adapter> init;
  if (!given_cfg.lora_init_from.empty()) {
    LORA_INPUT_CHECK(given_cfg.train.mode == TrainMode::kLora, given_cfg.source_path,
                     ": lora.init_from: adapters to start from need train.mode lora");
    init = read_adapter(given_cfg.lora_init_from, given_cfg.model.spec, "lora.init_from");
  }
  const Config cfg = init ? config_for_adapter(given_cfg, *init, "lora.init_from") : given_cfg;
  const int rank = comm.rank(), world = comm.size();
  const bool lead = rank == 0;
  std::ostream& out = opts.out ? *opts.out : std::cout;
  const int T = cfg.data.seq_len, m = cfg.train.micro_batch, accum = cfg.train.grad_accum;
  const long global_batch = cfg.global_batch(world);
  const uint64_t tokens_per_step = static_cast<uint64_t>(global_batch) * T;
  comm.set_timeout(std::chrono::milliseconds(static_cast<long>(cfg.comm.timeout_s * 1000)));

  TrainSummary summary;
  const int threads = configure_threads(cfg.device.threads);

  // Data: every rank holds the whole stream; the global index decides which sequence it reads.
  // Text with a tokenizer is tokenized once, by rank 0, into a cache every rank then reads.
  const TokenStream train_data = load_token_stream(cfg, cfg.data.train, &comm);
  TokenStream val_data;
  if (!cfg.data.val.empty()) val_data = load_token_stream(cfg, cfg.data.val, &comm);
  if (lead) {
    for (const TokenStream* d : {&train_data, static_cast<const TokenStream*>(&val_data)})
      for (const std::string& line : d->summary()) out << "lora: " << line << "\n";
  }

  auto model = init ? build_model_with_adapter(given_cfg, *init, "lora.init_from") : build_model(cfg);
  const std::string fingerprint = model->base_fingerprint();
  // Every rank must train the same adapters on the same base: the base fingerprints are compared
  // and rank 0's trainable parameters are broadcast (the only time parameters travel).
  {
    char root_fp[17] = {0};
    std::copy_n(fingerprint.c_str(), std::min<size_t>(16, fingerprint.size()), root_fp);
    comm.broadcast(root_fp, 16, comm::DType::kUint8, 0);
    LORA_INPUT_CHECK(std::string(root_fp) == fingerprint, "rank ", rank, ": base weights (fingerprint ",
                     fingerprint, ") differ from rank 0's (", root_fp,
                     "): the base weights must be the same files on every node");
    broadcast_trainable(*model, comm);
  }
  summary.n_trainable = model->n_trainable();
  summary.n_total = model->n_base_params() + model->n_lora_params();

  ops::AdamWParams hp;
  hp.lr = cfg.train.lr;
  hp.weight_decay = cfg.train.weight_decay;
  std::unique_ptr<TrainableOptimizer> optimizer = model->make_optimizer(hp);

  // ---- resume: rank 0 reads the checkpoint, every rank receives what it needs ----
  const std::string ckpt_dir = cfg.checkpoint_dir();
  std::string metrics_so_far;
  ResumeScalars rs;
  if (lead && opts.resume != ResumeMode::kNone)
    rs = restore_checkpoint(cfg, opts, *model, *optimizer, world, out, &metrics_so_far);
  comm.broadcast(&rs, 4, comm::DType::kInt64, 0);
  if (rs.has) {
    broadcast_trainable(*model, comm);
    std::vector<float> m(model->n_trainable()), v(model->n_trainable());
    optimizer->get_moments(m, v);
    comm.broadcast(std::span<float>(m), 0);
    comm.broadcast(std::span<float>(v), 0);
    optimizer->set_moments(m, v);
    optimizer->set_steps(rs.optimizer_step);
  }
  long step = rs.step;
  uint64_t tokens_seen = static_cast<uint64_t>(rs.tokens_seen);
  summary.start_step = step;
  long last_checkpoint_step = rs.has ? step : -1;

  prepare_output_dirs(cfg, lead);
  std::ofstream metrics;
  if (lead) {
    std::ofstream(fs::path(cfg.run.output_dir) / "config.yaml") << cfg.resolved_yaml;
    metrics.open(fs::path(cfg.run.output_dir) / "metrics.jsonl", std::ios::trunc);
    metrics << metrics_so_far << std::flush;
  }
  std::ofstream rank_log;
  if (opts.log_all_ranks)
    rank_log.open(fs::path(cfg.run.output_dir) / ("rank-" + std::to_string(rank) + ".log"),
                  std::ios::app);

  // The gradients travel on their own communicator (NCCL for device buffers; the control
  // communicator itself on the CPU); everything else stays on `comm`.
  const std::unique_ptr<GradientComm> grad_comm = make_gradient_comm(cfg, comm, *model);
  comm::Communicator& gcomm = grad_comm->comm();
  const uint64_t grad_bytes = model->n_trainable() * sizeof(float);
  if (lead) print_startup(out, cfg, gcomm, *model, threads, train_data.size());
  if (lead && init && !rs.has)
    out << "lora: adapters start from " << init->path
        << (init->peft ? " (PEFT adapter)"
                       : " (checkpoint at step " + std::to_string(init->checkpoint->step) + ")")
        << std::endl;

  const size_t bucket_elems = std::max<size_t>(
      1, static_cast<size_t>(cfg.comm.bucket_mb * 1024.0 * 1024.0 / sizeof(float)));
  comm::GradReducer reducer(gcomm, std::span<float>(model->trainable_grads(), model->n_trainable()),
                            bucket_elems, cfg.comm.overlap);
  grad_comm->attach(reducer);
  const GradReadyFn ready = [&](size_t offset, size_t count) { reducer.mark_ready(offset, count); };

  // The micro-batches of one step: accum x [m, T].
  std::vector<int32_t> tokens(static_cast<size_t>(accum) * m * T), targets(tokens.size());
  std::vector<uint64_t> seq_ids(static_cast<size_t>(accum) * m);
  const uint64_t dropout_seed = hash_u64(cfg.run.seed, kDropoutStream);
  // Whether a target can be masked (instruction data); text and token streams never mask.
  const bool masked_data =
      cfg.data.format != DataFormat::kText && cfg.data.format != DataFormat::kTokens;
  uint64_t tokens_trained = 0;  // unmasked targets trained on since this process started
  float lr = lr_at(step, cfg.train);

  // Rank 0 writes the checkpoint of the state after `steps_done` steps; every rank waits for it.
  auto save_checkpoint = [&](long steps_done) {
    if (lead) {
      const auto t0 = Clock::now();
      CheckpointState c;
      c.step = steps_done;
      c.tokens_seen = tokens_seen;
      c.world_size = world;
      c.base_fingerprint = fingerprint;
      c.spec = cfg.model.spec;
      c.mode = cfg.train.mode;
      c.lora = cfg.lora;
      c.config_yaml = cfg.resolved_yaml;
      c.optimizer_step = optimizer->steps();
      c.beta1 = hp.beta1;
      c.beta2 = hp.beta2;
      c.eps = hp.eps;
      c.weight_decay = hp.weight_decay;
      c.params.resize(model->n_trainable());
      model->get_trainable(c.params);
      c.adam_m.resize(model->n_trainable());
      c.adam_v.resize(model->n_trainable());
      optimizer->get_moments(c.adam_m, c.adam_v);
      c.data_seed = cfg.run.seed;
      c.data_cursor = steps_done;
      c.dropout_seed = dropout_seed;
      c.lr = lr;
      c.lr_warmup_steps = cfg.train.warmup_steps;
      c.lr_total_steps = cfg.train.steps;
      metrics.flush();
      std::ifstream mf(fs::path(cfg.run.output_dir) / "metrics.jsonl");
      c.metrics_jsonl.assign(std::istreambuf_iterator<char>(mf), std::istreambuf_iterator<char>());
      const std::string path = (fs::path(ckpt_dir) / checkpoint_file_name(steps_done)).string();
      write_checkpoint(path, c);
      prune_checkpoints(ckpt_dir, cfg.checkpoint.keep);
      summary.last_checkpoint = path;
      char line[512];
      std::snprintf(line, sizeof line, "checkpoint %s (%.0f ms)", path.c_str(),
                    1000.0 * seconds_since(t0));
      out << line << std::endl;
    }
    comm.barrier();
  };

  const auto t_start = Clock::now();
  auto t_window = Clock::now();
  long window_steps = 0;
  double window_comm_wait = 0.0;
  uint64_t window_comm_bytes = 0;
  double last_loss = std::numeric_limits<double>::quiet_NaN();
  long loss_read_step = -1;    // the last step whose loss was read and checked
  double step_targets = 0.0;   // unmasked targets of the last step's global batch
  // The loss of the step just done over the global batch, read only on the steps that report or
  // save it (on a GPU the read waits for the device). The gradient all-reduces are waited first,
  // with the timeout, so that a stalled peer ends the job instead of a device wait that never
  // returns. Collective over `comm`.
  auto read_step_loss = [&](long done) {
    reducer.wait_all();
    double loss_sum = model->loss_sum();  // this rank's, over its unmasked targets
    // Bookkeeping, not part of the gradient traffic.
    if (world > 1) comm.all_reduce(std::span<double>(&loss_sum, 1), comm::ReduceOp::kSum);
    const double loss = step_targets > 0 ? loss_sum / step_targets : 0.0;
    last_loss = loss;
    loss_read_step = done;
    if (!std::isfinite(loss))
      throw Error("training diverged: loss is " + std::to_string(loss) + " at step " +
                  std::to_string(done) + " (lower train.lr or set train.grad_clip)");
    return loss;
  };

  for (; step < cfg.train.steps; ++step) {
    // All ranks agree whether to stop before starting a step (a signal may reach only some).
    if (opts.stop_signal) {
      int32_t sig = opts.stop_signal->load();
      if (world > 1) comm.all_reduce(std::span<int32_t>(&sig, 1), comm::ReduceOp::kMax);
      if (sig != 0) {
        summary.stop_signal = sig;
        break;
      }
    }
    const double wait_before = gcomm.stats().wait_seconds;
    const uint64_t bytes_before = gcomm.stats().all_reduce_bytes;
    lr = lr_at(step, cfg.train);
    model->zero_grads();
    model->clear_loss_sum();
    // The step's loss is the sum over the unmasked targets of the whole global batch (every rank,
    // every micro-step) divided by their number, so N ranks equal 1 rank and accumulation changes
    // nothing: draw every micro-batch first and count them.
    double local_targets = 0.0;
    for (int k = 0; k < accum; ++k) {
      const size_t at = static_cast<size_t>(k) * m * T;
      fill_batch(train_data, cfg.run.seed, step, rank, world, k, m, T, tokens.data() + at,
                 targets.data() + at, seq_ids.data() + static_cast<size_t>(k) * m);
    }
    for (size_t i = 0; i < targets.size(); ++i) local_targets += targets[i] >= 0 ? 1.0 : 0.0;
    double global_targets = local_targets * world;  // every rank the same when nothing is masked
    if (masked_data && world > 1) {
      global_targets = local_targets;
      comm.all_reduce(std::span<double>(&global_targets, 1), comm::ReduceOp::kSum);
    }
    for (int k = 0; k < accum; ++k) {
      const size_t at = static_cast<size_t>(k) * m * T;
      ForwardOptions fo;
      fo.training = true;
      fo.dropout_seed = dropout_seed;
      fo.step = static_cast<uint64_t>(step);
      fo.seq_ids = seq_ids.data() + static_cast<size_t>(k) * m;
      fo.defer_loss = true;  // read once per logged step (model->loss_sum())
      model->forward(tokens.data() + at, targets.data() + at, m, T, fo);
      const double n_k = static_cast<double>(model->n_targets());
      const bool last = k == accum - 1;
      if (last) reducer.begin_step();
      // d(sum_k / N) = (n_k / N) d(mean_k)
      const float loss_scale =
          global_targets > 0 ? static_cast<float>(n_k) / static_cast<float>(global_targets) : 0.0f;
      model->backward(loss_scale, last ? ready : nullptr);
    }
    reducer.finish();
    const uint64_t step_grad_bytes = gcomm.stats().all_reduce_bytes - bytes_before;
    step_targets = global_targets;
    tokens_trained += static_cast<uint64_t>(global_targets);
    optimizer->step(lr, cfg.train.grad_clip);
    tokens_seen += tokens_per_step;
    ++window_steps;

    const long done = step + 1;
    const bool is_last = done == cfg.train.steps;
    const bool do_eval = !val_data.tokens().empty() &&
                         ((cfg.train.eval_every > 0 && done % cfg.train.eval_every == 0) || is_last);
    const bool do_log = done % cfg.train.log_every == 0 || is_last || do_eval;
    const bool do_checkpoint =
        cfg.checkpoint.every > 0 && done % cfg.checkpoint.every == 0 && !is_last;
    const double loss = do_log || do_checkpoint ? read_step_loss(done)
                                                : std::numeric_limits<double>::quiet_NaN();
    window_comm_wait += gcomm.stats().wait_seconds - wait_before;
    window_comm_bytes += step_grad_bytes;
    double val_loss = std::numeric_limits<double>::quiet_NaN();
    if (do_eval) {
      val_loss = evaluate(*model, val_data, cfg, comm);
      summary.final_val_loss = val_loss;
      if (!(summary.best_val_loss <= val_loss)) {
        summary.best_val_loss = val_loss;
        summary.best_val_step = done;
      }
    }
    const float grad_norm = do_log ? optimizer->last_grad_norm() : 0.0f;
    if (do_log) {
      const double dt = seconds_since(t_window);
      const double tok_s = dt > 0 ? double(window_steps * tokens_per_step) / dt : 0.0;
      const double comm_ms = 1000.0 * window_comm_wait / window_steps;
      const double bytes_step = double(window_comm_bytes) / window_steps;
      const double eta = dt / window_steps * double(cfg.train.steps - done);
      summary.tokens_per_s = tok_s;
      if (lead) {
        StepRecord r;
        r.step = done;
        r.total_steps = cfg.train.steps;
        r.loss = loss;
        r.lr = lr;
        r.tokens_per_s = tok_s;
        r.tokens_seen = tokens_seen;
        r.tokens_trained = tokens_trained;
        r.comm_bytes = bytes_step;
        r.comm_ms = comm_ms;
        r.grad_norm = grad_norm;
        r.eta_s = eta;
        r.elapsed_s = seconds_since(t_start);
        r.has_val = do_eval;
        r.val_loss = val_loss;
        out << progress_line(r) << std::endl;
        metrics << metrics_json(r) << "\n" << std::flush;
      }
      if (rank_log.is_open())
        rank_log << "step " << done << " loss " << loss << " grad_norm " << grad_norm << std::endl;
      t_window = Clock::now();
      window_steps = 0;
      window_comm_wait = 0.0;
      window_comm_bytes = 0;
    }
    if (do_checkpoint) {
      save_checkpoint(done);
      last_checkpoint_step = done;
    }
  }
  // A stop signal may end the loop after a step whose loss was not read: check it before the
  // checkpoint below saves that state.
  if (step > summary.start_step && loss_read_step != step) read_step_loss(step);
  reducer.wait_all();  // nothing in flight past the loop
  summary.steps_done = step;
  summary.tokens_trained = tokens_trained;
  summary.final_train_loss = last_loss;
  summary.grad_bytes_per_step = grad_bytes;
  if (rank_log.is_open()) {
    std::vector<float> trained(model->n_trainable());
    model->get_trainable(trained);
    rank_log << "trainable parameters fingerprint " << base_fingerprint(trained.data(), trained.size())
             << " after step " << step << std::endl;
  }
  // Final (or signal-triggered) checkpoint of the state after `step` steps.
  if (last_checkpoint_step != step) save_checkpoint(step);
  if (lead && cfg.train.mode == TrainMode::kFull && summary.stop_signal == 0) {
    save_full_model(cfg, *model);
    out << "lora: saved the trained model to " << cfg.run.output_dir
        << " (config.json + model.safetensors, a Hugging Face model directory)" << std::endl;
  }
  return summary;
}

}  // namespace lora
