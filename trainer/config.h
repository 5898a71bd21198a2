// The run configuration (DESIGN.md section 4): YAML parsed with yaml-cpp, then validated.
//
// load_config() reads the file, applies `--set key.path=value` overrides (the value is parsed as
// YAML, so `--set lora.targets=[attn.qkv,mlp.fc]` works), checks every key against the schema and
// every value against its type and range, and returns the typed Config. Any problem throws
// lora::InputError whose message names the file and line (or the override) and the key, and says
// what was expected: an unknown key, a wrong type, an out-of-range value, a missing data file.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/model/lora_layout.h"
#include "core/model/spec.h"

namespace lora {

enum class DataFormat { kText, kTokens, kJsonl };
// How JSONL examples become text (DESIGN.md section 4, Data): none = the texts as they are;
// chatml = Qwen2's chat template; llama3 = Llama 3's.
enum class ChatTemplate { kNone, kChatml, kLlama3 };
enum class LrSchedule { kCosine, kConstant };
enum class DeviceBackend { kAuto, kCpu, kCuda };
enum class CommBackend { kAuto, kLocal, kMpi, kNccl };

struct RunConfig {
  std::string name = "run";
  std::string output_dir = "runs/run";
  uint64_t seed = 1337;
};

struct ModelConfig {
  std::string path;     // a Hugging Face model directory (config.json + safetensors), or empty
  std::string weights;  // one safetensors file in the family's names; empty with neither: random
  ModelSpec spec;       // arch and sizes: from path's config.json, or from the YAML keys
  std::string dtype = "fp32";  // fp32 | bf16 (bf16 is for the CUDA backend)
  const std::string& arch() const { return spec.arch; }
};

struct DataConfig {
  std::vector<std::string> train;
  std::vector<std::string> val;  // may be empty: no evaluation
  DataFormat format = DataFormat::kText;
  int seq_len = 64;
  std::string tokenizer;  // tokenizer.json or model directory; empty: bytes are tokens (text)
  ChatTemplate chat_template = ChatTemplate::kNone;
  bool mask_prompt = true;  // jsonl: loss only on completion / assistant tokens
  bool pack = true;         // jsonl: pack examples into seq_len windows (else one per sequence)
};

struct TrainConfig {
  TrainMode mode = TrainMode::kLora;
  int micro_batch = 8;  // sequences per rank per micro-step
  int grad_accum = 1;
  long steps = 100;
  float lr = 1e-3f;
  long warmup_steps = 0;
  LrSchedule schedule = LrSchedule::kCosine;
  float min_lr = 0.0f;
  float weight_decay = 0.0f;
  float grad_clip = 1.0f;  // 0 disables clipping
  long eval_every = 0;     // 0: evaluate only at the end
  int eval_batches = 4;
  long log_every = 10;
};

struct CheckpointConfig {
  std::string dir;  // empty: <output_dir>/checkpoints
  long every = 0;   // 0: only at the end
  int keep = 3;
};

struct DeviceConfig {
  DeviceBackend backend = DeviceBackend::kAuto;
  int threads = 0;  // 0: all cores
};

struct CommConfig {
  CommBackend backend = CommBackend::kAuto;
  double bucket_mb = 4.0;
  bool overlap = true;
  double timeout_s = 300.0;
};

struct Config {
  RunConfig run;
  ModelConfig model;
  LoraSpec lora;
  // lora.init_from: adapters to start training from (a checkpoint or a PEFT adapter directory,
  // resolved against the config's directory); empty: lora.init.
  std::string lora_init_from;
  DataConfig data;
  TrainConfig train;
  CheckpointConfig checkpoint;
  DeviceConfig device;
  CommConfig comm;

  std::string source_path;    // the YAML file it came from
  std::string resolved_yaml;  // every key with its final value (written to output_dir/config.yaml)
  std::set<std::string> given_keys;  // the leaf keys the file or a --set gave ("lora.rank", ...)

  long global_batch(int world_size) const {
    return static_cast<long>(train.micro_batch) * train.grad_accum * world_size;
  }
  std::string checkpoint_dir() const;
};

// Parses and validates. Relative data/weights paths are resolved against the config file's
// directory. Throws lora::InputError on any problem.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text (source_name stands in for the path in messages and path resolution).
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// The resolved YAML of c (what resolved_yaml holds), for a Config changed after parsing.
std::string resolved_config_yaml(const Config& c);

std::string_view data_format_name(DataFormat f);
std::string_view chat_template_name(ChatTemplate t);
// The tokenizer the data uses: data.tokenizer, else model.path when that directory holds a
// tokenizer.json. Empty: none (text bytes are the tokens).
std::string tokenizer_source(const Config& c);
std::string_view lr_schedule_name(LrSchedule s);
std::string_view train_mode_name(TrainMode m);

}  // namespace lora
