// The subcommands behind the CLI. Each returns an exit code and throws lora::InputError /
// lora::Error for the CLI to report.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "launch/world.h"

namespace lora {

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string resume;  // auto | none | PATH
  bool log_all_ranks = false;
  const std::atomic<int>* stop_signal = nullptr;
};

struct GenerateArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string adapter;
  std::string prompt;
  int tokens = 200;
  float temperature = 0.0f;
  uint64_t seed = 0;
  bool chat = false;  // the prompt is a user message in data.template; print the reply alone
};

int run_train(World& world, const TrainArgs& args);
struct EvalArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string adapter;    // a checkpoint or a PEFT directory; empty: the base model alone
  bool json = false;      // one JSON object on stdout instead of the text line
  long max_windows = 0;   // 0: every window
};

struct MergeArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string adapter;
  std::string out;
};

int run_eval(World& world, const EvalArgs& args);
// `lora export CKPT.h5 --peft OUT_DIR` (single process).
int run_export(const std::string& checkpoint, const std::string& out_dir);
// `lora merge CONFIG --adapter CKPT|PEFT_DIR --out MODEL_DIR` (single process).
int run_merge(const MergeArgs& args);
int run_generate(World& world, const GenerateArgs& args);
int run_inspect(const std::string& checkpoint);

struct TokenizeArgs {
  std::string tokenizer;  // tokenizer.json or model directory
  std::string input;      // empty: standard input
  bool decode = false;
};
// `lora tokenize`: text lines to id lines, or (decode) id lines to text.
int run_tokenize(const TokenizeArgs& args);

}  // namespace lora
